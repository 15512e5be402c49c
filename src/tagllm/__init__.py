"""tagllm: learned input tags that repurpose a frozen causal LM (Tag-LLM, arXiv 2402.05140)."""

__version__ = "0.1.0"

from tagllm.config import HeadConfig, TagConfig, TrainConfig  # noqa: E402
from tagllm.model import TaggedModel  # noqa: E402

__all__ = ["HeadConfig", "TagConfig", "TaggedModel", "TrainConfig", "__version__"]
