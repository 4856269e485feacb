"""
netguard: a hardened single-port network gateway, and the Twisted toolkit it is made of.

The reusable parts live in modules of their own: L{netguard.framing} (bounded line receiver),
L{netguard.auth} (SCRAM-SHA-256 verifiers and sessions), L{netguard.log} (escaping and
observers). The gateway itself is assembled in L{netguard.service}.
"""

__version__ = "0.1.0"
