"""
State shared between gateway processes and instances through Redis: penalties, per-source
rates and spent returning-client tickets (L{netguard.shared.state}).
"""
