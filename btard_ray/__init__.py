"""btard-ray: Byzantine-tolerant elastic data-parallel training on Ray (BTARD-SGD).

Importing the package fixes Ray's authentication mode before Ray itself is imported
(Ray reads ``RAY_AUTH_MODE`` once, at import): see :mod:`btard_ray.ray_auth`.
"""

from btard_ray.ray_auth import configure_ray_auth

configure_ray_auth()

__version__ = "0.1.0"
