"""ALBEF: a ViT, a BERT-style text encoder and fusion layers over both (Li et al. 2021).

"Align before fuse": the text layers (bidirectional, no image) and the image tower give the
contrastive embeddings (their [CLS] tokens, projected); the fusion layers continue from the
text encoder's outputs with cross-attention to every image token, and feed the matching
(ITM) head and the masked-language-model head. Each method is one piece of the forward
pass, so the family (families/albef.py) runs them on the parameters or on their momentum
copy, and on the hard negatives it pairs across the global batch.
"""
import jax.numpy as jnp

from vlp_jax.models import fusion


class TextEncoderHeads:
  """What ALBEF and mPLUG share over their own fusion: the text encoder (`text_layers`
  under `embed`) with its contrastive embedding, and the ITM and MLM heads on the fused text
  (a mixin of methods; the modules come from the subclass's setup)."""

  def text_hidden(self, tokens, deterministic=True):
    """The text encoder's outputs [B, L, W] ([CLS]-first tokens, padding masked)."""
    x = self.embed(tokens, deterministic=deterministic)
    return self.text_layers(x, fusion.padding_mask(tokens), deterministic=deterministic)

  def text_embedding(self, hidden):
    return fusion.normalize(self.text_proj(hidden[:, 0]))

  def encode_text(self, tokens):
    return self.text_embedding(self.text_hidden(tokens))

  def itm_logits(self, fused):
    """[B, 2] (no match, match) logits of the fused [CLS] output."""
    return self.itm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_head_io(self, fused):
    """(head hidden [B, L, W], kernel [W, V], bias [V]): what the fused loss reads."""
    kernel, bias = self.mlm_head.output(self.embed.token_embedding)
    return self.mlm_head(fused), kernel, bias

  def mlm_logits(self, fused):
    """[B, L, V] (evaluation and tests; training uses the fused loss)."""
    return self.vocabulary_logits(*self.mlm_head_io(fused))


class Albef(TextEncoderHeads, fusion.AlignFuseModel):
  fusion_depth: int = 6

  def setup(self):
    self.setup_shared()
    self.text_layers = fusion.TextStack(self.text_depth, **self.text)
    self.fusion_layers = fusion.TextStack(self.fusion_depth, cross_attention=True, **self.text)
    self.mlm_head = fusion.VocabularyHead(self.vocab_size, self.text["activation"], self.tied,
                                          dtype=self.dtype)

  def fuse(self, hidden, tokens, image_tokens, deterministic=True):
    """Fusion layers over text outputs `hidden` of `tokens`, attending to `image_tokens`."""
    return self.fusion_layers(hidden, fusion.padding_mask(tokens), image_tokens,
                              deterministic=deterministic)

  def init_all(self, images, tokens):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    hidden = self.text_hidden(tokens)
    fused = self.fuse(hidden, tokens, image_tokens)
    return (self.image_embedding(image_tokens), self.text_embedding(hidden),
            self.itm_logits(fused), self.mlm_head_io(fused), self.logit_scale())


def from_config(m):
  """Albef from `config.model`: text_depth text layers and fusion_depth fusion layers of
  width text_width; the ViT in DeiT's layout (patch bias, no LayerNorm before the encoder)."""
  return Albef(fusion_depth=m.fusion_depth, **fusion.shared_fields(m))
