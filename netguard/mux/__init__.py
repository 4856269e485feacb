# -*- test-case-name: tests.test_mux_session -*-
"""
Stream multiplexing over one connection: yamux framing (hashicorp/yamux C{spec.md}),
sans-I/O, with every bound the spec leaves open set, named and enforced.

L{frames} reads and writes the 12-byte frame header; L{session.MuxSession} runs one end of
a session; L{stream.MuxStream} is one stream, usable as a relay transport. C{docs/multiplexing.md}
explains the choice of framing and the bounds.
"""
