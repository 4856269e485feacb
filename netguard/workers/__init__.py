# -*- test-case-name: tests.test_workers -*-
"""
Several gateway processes on one host (C{workers = N}): the supervisor
(L{netguard.workers.supervisor}) holds the lock, the control socket and every listening
socket, and runs N workers (L{netguard.worker}) that inherit the sockets and speak AMP with
it (L{netguard.workers.commands}). How limits stay whole: L{netguard.workers.budget}.
"""
