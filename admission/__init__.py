"""Admission of new peers (design §5): identities, puzzles, probation, the controller actor.

Not implemented yet: see the issue "Elastic membership and Sybil-resistant admission".
"""
