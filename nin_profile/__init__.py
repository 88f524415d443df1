"""nin_profile: parameters, FLOPs and memory of PyTorch models for training and prediction,
estimated per layer without a GPU and measured on one.

    >>> import nin_profile
    >>> p = nin_profile.profile("nin", "alexnet", batch=128)   # doctest: +SKIP
    >>> p.models_frame()                                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["Profile", "ProfileError", "__version__", "profile"]

if TYPE_CHECKING:
    from nin_profile.api import profile
    from nin_profile.errors import ProfileError
    from nin_profile.results import Profile


def __getattr__(name: str) -> Any:
    """`profile`, `Profile` and `ProfileError`, imported when first used: `import nin_profile`
    (and the command line's --help) needs no torch."""
    if name == "profile":
        from nin_profile.api import profile

        return profile
    if name == "Profile":
        from nin_profile.results import Profile

        return Profile
    if name == "ProfileError":
        from nin_profile.errors import ProfileError

        return ProfileError
    raise AttributeError(f"module 'nin_profile' has no attribute {name!r}")
