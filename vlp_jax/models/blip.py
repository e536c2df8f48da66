"""BLIP: a ViT and one BERT-style text stack in three roles (Li et al. 2022).

- unimodal text encoder: [CLS] + caption, bidirectional self-attention, no image: its [CLS]
  output, projected, is the contrastive embedding;
- image-grounded text encoder: [ENC] + caption, bidirectional self-attention and
  cross-attention to the image tokens: its first output feeds the matching (ITM) head;
- image-grounded text decoder: [DEC] + caption, causal self-attention and cross-attention:
  the language-model head predicts the next token.
Every layer holds two self-attentions (bidirectional, causal); the embeddings,
cross-attention and MLP weights are one set of arrays that the encoder and the decoder both
read, as the paper's encoder and decoder share all but the self-attention layers.
"""
import jax.numpy as jnp

from vlp_jax.models import fusion


class Blip(fusion.AlignFuseModel):
  decode: bool = False

  def setup(self):
    self.setup_shared()
    self.text_layers = fusion.TextStack(self.text_depth, cross_attention=True,
                                        self_attention=("bidirectional", "causal"),
                                        **self.text)
    self.lm_head = fusion.VocabularyHead(self.vocab_size, self.text["activation"], self.tied,
                                         dtype=self.dtype)

  def caption_context(self, images):
    """What the decoder cross-attends to: every image token."""
    return self.image_tokens(images)

  def text_embedding(self, tokens, deterministic=True):
    """Unimodal encoder on [CLS]-first tokens -> L2-normalised embedding [B, E]."""
    x = self.embed(tokens, deterministic=deterministic)
    x = self.text_layers(x, fusion.padding_mask(tokens), deterministic=deterministic,
                         first_only=True)
    return fusion.normalize(self.text_proj(x[:, 0]))

  def encode_text(self, tokens):
    return self.text_embedding(tokens)

  def itm_logits(self, tokens, image_tokens, rows=None, deterministic=True):
    """[B, 2] (no match, match) logits of [ENC]-first tokens grounded in image_tokens, or
    with `rows` [B] in image_tokens[rows] (each image's keys and values projected once)."""
    x = self.embed(tokens, deterministic=deterministic)
    context = image_tokens if rows is None else fusion.SharedContext(image_tokens, rows)
    x = self.text_layers(x, fusion.padding_mask(tokens), context,
                         deterministic=deterministic, first_only=True)
    return self.itm_head(x[:, 0]).astype(jnp.float32)

  def decoder_hidden(self, ids, image_tokens, deterministic=True):
    """The LM head's input [B, L, W] for [DEC]-first ids grounded in image_tokens."""
    x = self.embed(ids, deterministic=deterministic)
    x = self.text_layers(x, fusion.padding_mask(ids), image_tokens, mode="causal",
                         deterministic=deterministic)
    return self.lm_head(x)

  def lm_output(self):
    """(kernel [W, V], bias [V]) of the LM head's output projection."""
    return self.lm_head.output(self.embed.token_embedding)

  def lm_logits(self, ids, image_tokens):
    """[B, L, V] next-token logits (evaluation and tests; training uses the fused loss)."""
    return self.vocabulary_logits(self.decoder_hidden(ids, image_tokens), *self.lm_output())

  def decode_step(self, ids, position, context=None):
    """Decode mode: logits [B, T, V] of `ids` at `position`...; the first call (context
    given, full length) sizes the caches and stores the image keys/values."""
    x = self.embed(ids, position)
    x = self.text_layers(x, None, context, mode="causal")
    return self.vocabulary_logits(self.lm_head(x), *self.lm_output())

  def init_all(self, images, tokens):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    return (self.image_embedding(image_tokens), self.text_embedding(tokens),
            self.itm_logits(tokens, image_tokens), self.lm_logits(tokens, image_tokens),
            self.logit_scale())


def from_config(m, decode=False):
  """Blip from `config.model`: one stack of text_depth layers of width text_width; the ViT
  in BLIP's layout (patch bias, no LayerNorm before the encoder). decode=True: the same
  weights with KV caches, for models/decoding.py."""
  return Blip(decode=decode, **fusion.shared_fields(m, decode))
