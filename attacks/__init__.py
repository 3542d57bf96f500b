"""Byzantine behaviours as plug-ins with one small interface.

Not implemented yet: see the issues on the BTARD defence and the attack library.
"""
