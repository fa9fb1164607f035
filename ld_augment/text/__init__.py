"""Stage: text (see DEVELOPERS.md). Attribute encoders turning report strings into the UNet context.

* ``"vocab"`` (:class:`VocabEmbeddingEncoder`, id ``ld-vocab-embedding-v1``): default for training from scratch;
  a learned embedding of the closed attribute vocabulary, no download.
* ``"biomedclip"`` (:class:`BiomedCLIPEncoder`, id ``biomedclip-pubmedbert-256``): the original's BiomedCLIP text
  tower (open_clip, local files, user-supplied ``open_clip_pytorch_model.bin``); needed for the released weights.
"""

from ld_augment.text.base import AttributeEncoder
from ld_augment.text.registry import available_encoders, create_encoder
from ld_augment.text.biomedclip import BiomedCLIPEncoder, load_text_state_dict
from ld_augment.text.offline import VocabEmbeddingEncoder, normalize_phrase

__all__ = [
    "AttributeEncoder", "BiomedCLIPEncoder", "VocabEmbeddingEncoder", "available_encoders", "create_encoder",
    "load_text_state_dict", "normalize_phrase",
]  # fmt: skip
