"""μP (maximal update parametrization), Cerebras / LLM360 Crystal flavour.

Self-contained: torch only, except `mup.optimizer.mup_config_overrides`, which imports
megatron-core lazily. See docs/mup.md.
"""

from .config import MuPConfig, crystal_7b
from .init import TRUNC_NORMAL_STD_FACTOR, init_
from .rules import MuPRules, ParamClass, Rules, StandardRules, classify

__all__ = [
    "MuPConfig", "crystal_7b", "ParamClass", "classify", "MuPRules", "StandardRules", "Rules",
    "init_", "TRUNC_NORMAL_STD_FACTOR",
]
