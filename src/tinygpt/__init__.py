"""TinyGPT: small GPT-Neo-style language models as first-class Hugging Face models.

Importing the package registers the model with transformers' Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForCausalLM` and the task heads' Auto classes (sequence and token classification, question answering)
resolve `model_type="tinygpt"`.
"""

from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification)

from .configuration_tinygpt import PRESETS, TinyGPTConfig
from .modeling_tinygpt import (TinyGPTForCausalLM, TinyGPTForQuestionAnswering, TinyGPTForSequenceClassification,
                               TinyGPTForTokenClassification, TinyGPTModel, TinyGPTPreTrainedModel)

AUTO_CLASSES = {AutoModel: TinyGPTModel, AutoModelForCausalLM: TinyGPTForCausalLM,
                AutoModelForSequenceClassification: TinyGPTForSequenceClassification,
                AutoModelForTokenClassification: TinyGPTForTokenClassification,
                AutoModelForQuestionAnswering: TinyGPTForQuestionAnswering}
AutoConfig.register(TinyGPTConfig.model_type, TinyGPTConfig, exist_ok=True)
for auto_class, model_class in AUTO_CLASSES.items():
    auto_class.register(TinyGPTConfig, model_class, exist_ok=True)
    # save_pretrained() then writes `auto_map` and copies the two self-contained code files next to the
    # weights, so a saved folder loads with trust_remote_code=True where tinygpt is not installed.
    model_class.register_for_auto_class(auto_class.__name__)
TinyGPTConfig.register_for_auto_class()

__version__ = "0.1.0"
__all__ = ["PRESETS", "TinyGPTConfig", "TinyGPTModel", "TinyGPTForCausalLM", "TinyGPTForSequenceClassification",
           "TinyGPTForTokenClassification", "TinyGPTForQuestionAnswering", "TinyGPTPreTrainedModel"]
