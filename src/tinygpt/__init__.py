"""TinyGPT: small GPT-Neo-style language models as first-class Hugging Face models.

Importing the package registers the model with transformers' Auto classes, so
`AutoConfig`, `AutoModel` and `AutoModelForCausalLM` resolve `model_type="tinygpt"`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_tinygpt import PRESETS, TinyGPTConfig
from .modeling_tinygpt import TinyGPTForCausalLM, TinyGPTModel, TinyGPTPreTrainedModel

AutoConfig.register(TinyGPTConfig.model_type, TinyGPTConfig, exist_ok=True)
AutoModel.register(TinyGPTConfig, TinyGPTModel, exist_ok=True)
AutoModelForCausalLM.register(TinyGPTConfig, TinyGPTForCausalLM, exist_ok=True)

# save_pretrained() then writes `auto_map` and copies the two self-contained code files next to the
# weights, so a saved folder loads with trust_remote_code=True where tinygpt is not installed.
TinyGPTConfig.register_for_auto_class()
TinyGPTModel.register_for_auto_class("AutoModel")
TinyGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"
__all__ = ["PRESETS", "TinyGPTConfig", "TinyGPTModel", "TinyGPTForCausalLM", "TinyGPTPreTrainedModel"]
