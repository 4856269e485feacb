"""
Know your peer without trusting it: forward-confirmed reverse DNS (L{confirm_hostname}), RFC
1413 ident (L{ident_query}) and the policy that runs both for a connection (L{PeerChecks}).
"""

from netguard.peer.checks import PeerCheckPolicy, PeerChecks
from netguard.peer.fcrdns import confirm_hostname, make_resolver
from netguard.peer.ident import ident_query

__all__ = ["PeerCheckPolicy", "PeerChecks", "confirm_hostname", "ident_query", "make_resolver"]
