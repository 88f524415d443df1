"""nin_profile: parameters, FLOPs and memory of PyTorch models for training and prediction,
estimated per layer without a GPU and measured on one.

    >>> import nin_profile
    >>> profile = nin_profile.profile("nin", "alexnet", batch=128)   # doctest: +SKIP
    >>> profile.models_frame()                                      # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.2.0"
