"""Admission of new peers (design §5): identities, puzzles, probation, the controller actor.

* :mod:`admission.puzzle`: the memory-hard (argon2id) admission puzzle and its difficulty
  (a solution costs alpha gradients); pure, no Ray.
* :mod:`admission.book`: the admission controller's bookkeeping (issue challenges, check
  signed solutions: single-use, expiring, bound to the joiner's key); pure, no Ray.

This package imports nothing on purpose (no Ray, no torch): import the submodules.
"""
