"""BLIP's pretraining step in PyTorch, composed from transformers' BLIP modules: the
reference side of bench/compare_blip.py (LAVIS, which would be the obvious one, pins
transformers < 4.27 and does not install beside this stack).

`torch_pretrain` follows BLIP's models/blip_pretrain.py line for line: a vision model and
vision_proj; a BlipTextModel encoder run unimodal ([CLS], no image) for ITC and
image-grounded ([ENC]) for ITM; a BlipTextLMHeadModel decoder ([DEC], causal) tied to the
encoder in everything but self-attention; momentum copies (EMA) and feature queues; ITC
with momentum distillation; ITM on hard negatives; LM loss. Token ids are vlp_jax's.
"""
import copy

PAD, EOS, DEC = 0, 2, 6  # vlp_jax.data.tokenizer's ids


def hf_blip_config(m):
  """transformers.BlipConfig of our config.model (what import_hf_blip.hf_config inverts)."""
  import transformers
  return transformers.BlipConfig(
      vision_config=dict(image_size=m.image_size, patch_size=m.patch_size,
                         hidden_size=m.vision_width, num_hidden_layers=m.vision_depth,
                         num_attention_heads=m.vision_heads,
                         intermediate_size=int(m.vision_width * m.vision_mlp_ratio),
                         hidden_act="gelu", layer_norm_eps=1e-5, attention_dropout=0.0),
      text_config=dict(vocab_size=m.vocab_size, hidden_size=m.text_width,
                       num_hidden_layers=m.text_depth, num_attention_heads=m.text_heads,
                       intermediate_size=int(m.text_width * m.text_mlp_ratio),
                       max_position_embeddings=m.context_length, hidden_act="gelu",
                       layer_norm_eps=1e-12, hidden_dropout_prob=m.dropout,
                       attention_probs_dropout_prob=0.0, pad_token_id=PAD, bos_token_id=DEC,
                       sep_token_id=EOS, eos_token_id=EOS, label_smoothing=0.0),
      image_text_hidden_size=m.embed_dim)


def torch_models(m, seed=0):
  """(BlipForImageTextRetrieval, BlipForConditionalGeneration) sharing what BLIP's
  pretraining model shares: one vision model; the decoder's embeddings, cross-attention and
  MLP are the encoder's (tie_encoder_decoder_weights with skip key '/attention'), its LM
  output the word embeddings. LayerNorms and biases perturbed (parity sees every slot)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  config = hf_blip_config(m)
  ret = transformers.BlipForImageTextRetrieval(config)
  cap = transformers.BlipForConditionalGeneration(config)
  cap.vision_model = ret.vision_model
  enc, dec = ret.text_encoder, cap.text_decoder
  dec.bert.embeddings = enc.embeddings
  for e, d in zip(enc.encoder.layer, dec.bert.encoder.layer):
    d.crossattention, d.intermediate, d.output = e.crossattention, e.intermediate, e.output
  dec.cls.predictions.decoder.weight = enc.embeddings.word_embeddings.weight
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in (ret, cap):
      for name, p in module.named_parameters():
        if p.ndim == 1 and ("LayerNorm" in name or "layer_norm" in name or
                            "layernorm" in name) and name.endswith("weight"):
          p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
          p.copy_(0.02 * torch.randn(p.shape, generator=gen))
  return ret, cap


def torch_pretrain(m, loss_config, seed=0):
  """BLIP's pretraining model (models/blip_pretrain.py) over transformers' modules."""
  import torch
  import torch.nn.functional as F
  ret, cap = torch_models(m, seed)

  class TorchBlipPretrain(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.visual_encoder, self.vision_proj = ret.vision_model, ret.vision_proj
      self.text_encoder, self.text_proj, self.itm_head = ret.text_encoder, ret.text_proj, ret.itm_head
      self.text_decoder = cap.text_decoder
      self.temp = torch.nn.Parameter(0.07 * torch.ones([]))
      self.visual_encoder_m = copy.deepcopy(self.visual_encoder)
      self.vision_proj_m = copy.deepcopy(self.vision_proj)
      self.text_encoder_m = copy.deepcopy(self.text_encoder)
      self.text_proj_m = copy.deepcopy(self.text_proj)
      self.model_pairs = [(self.visual_encoder, self.visual_encoder_m),
                          (self.vision_proj, self.vision_proj_m),
                          (self.text_encoder, self.text_encoder_m),
                          (self.text_proj, self.text_proj_m)]
      self.params_pairs = [(p, pm) for a, b in self.model_pairs
                           for p, pm in zip(a.parameters(), b.parameters())]
      for _, pm in self.params_pairs:
        pm.requires_grad = False
      self.momentum, self.queue_size = loss_config.momentum, loss_config.queue_size
      e = m.embed_dim
      self.register_buffer("image_queue", F.normalize(torch.randn(e, self.queue_size), dim=0))
      self.register_buffer("text_queue", F.normalize(torch.randn(e, self.queue_size), dim=0))
      self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self):
      live = [p.detach() for p, _ in self.params_pairs]
      mom = [pm for _, pm in self.params_pairs]
      torch._foreach_mul_(mom, self.momentum)  # pylint: disable=protected-access
      torch._foreach_add_(mom, live, alpha=1 - self.momentum)  # pylint: disable=protected-access

    @torch.no_grad()
    def _dequeue_and_enqueue(self, image_feat, text_feat):
      b, ptr = image_feat.shape[0], int(self.queue_ptr)
      self.image_queue[:, ptr:ptr + b] = image_feat.T
      self.text_queue[:, ptr:ptr + b] = text_feat.T
      self.queue_ptr[0] = (ptr + b) % self.queue_size

    def forward(self, image, ids_cls, ids_enc, ids_dec, mask, alpha):
      with torch.no_grad():
        self.temp.clamp_(0.001, 0.5)
      image_embeds = self.visual_encoder(pixel_values=image).last_hidden_state
      image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
      image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
      text_out = self.text_encoder(input_ids=ids_cls, attention_mask=mask)  # mode='text'
      text_feat = F.normalize(self.text_proj(text_out.last_hidden_state[:, 0]), dim=-1)

      with torch.no_grad():  # ITC with momentum distillation
        self._momentum_update()
        image_embeds_m = self.visual_encoder_m(pixel_values=image).last_hidden_state
        image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
        image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
        text_out_m = self.text_encoder_m(input_ids=ids_cls, attention_mask=mask)
        text_feat_m = F.normalize(self.text_proj_m(text_out_m.last_hidden_state[:, 0]), dim=-1)
        text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
        sim_i2t_m = image_feat_m @ text_feat_all / self.temp
        sim_t2i_m = text_feat_m @ image_feat_all / self.temp
        sim_targets = torch.zeros(sim_i2t_m.size())
        sim_targets.fill_diagonal_(1)
        sim_i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * sim_targets
        sim_t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * sim_targets
      sim_i2t = image_feat @ text_feat_all / self.temp
      sim_t2i = text_feat @ image_feat_all / self.temp
      loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets, dim=1).mean()
      loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets, dim=1).mean()
      loss_ita = (loss_i2t + loss_t2i) / 2
      self._dequeue_and_enqueue(image_feat_m, text_feat_m)

      # ITM: positives, then a hard negative image per text and text per image.
      bs = image.size(0)
      output_pos = self.text_encoder(input_ids=ids_enc, attention_mask=mask,
                                     encoder_hidden_states=image_embeds,
                                     encoder_attention_mask=image_atts)
      with torch.no_grad():
        weights_t2i = F.softmax(sim_t2i[:, :bs], dim=1) + 1e-4
        weights_t2i.fill_diagonal_(0)
        weights_i2t = F.softmax(sim_i2t[:, :bs], dim=1) + 1e-4
        weights_i2t.fill_diagonal_(0)
        neg_image = torch.multinomial(weights_t2i, 1)[:, 0]
        neg_text = torch.multinomial(weights_i2t, 1)[:, 0]
      image_embeds_neg = image_embeds[neg_image]
      text_ids_all = torch.cat([ids_enc, ids_enc[neg_text]], dim=0)
      text_atts_all = torch.cat([mask, mask[neg_text]], dim=0)
      image_embeds_all = torch.cat([image_embeds_neg, image_embeds], dim=0)
      image_atts_all = torch.cat([image_atts, image_atts], dim=0)
      output_neg = self.text_encoder(input_ids=text_ids_all, attention_mask=text_atts_all,
                                     encoder_hidden_states=image_embeds_all,
                                     encoder_attention_mask=image_atts_all)
      vl_embeddings = torch.cat([output_pos.last_hidden_state[:, 0],
                                 output_neg.last_hidden_state[:, 0]], dim=0)
      vl_output = self.itm_head(vl_embeddings)
      itm_labels = torch.cat([torch.ones(bs, dtype=torch.long),
                              torch.zeros(2 * bs, dtype=torch.long)])
      loss_itm = F.cross_entropy(vl_output, itm_labels)

      # LM: [DEC] + caption, causal, grounded in the image; pads ignored.
      targets = ids_dec.masked_fill(ids_dec == PAD, -100)
      loss_lm = self.text_decoder(input_ids=ids_dec, attention_mask=mask,
                                  encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=image_atts, labels=targets).loss
      return loss_ita, loss_itm, loss_lm

  return TorchBlipPretrain(), ret, cap


def torch_optimizer(net, o, foreach):
  """AdamW as ours (optimizer.make): decay on matrices only, our betas/eps/lr."""
  import torch
  tables = ("word_embeddings.weight", "position_embeddings.weight", "position_embedding",
            "class_embedding")  # ours: token/position embeddings and learned tokens
  decay = [p for n, p in net.named_parameters() if p.requires_grad and p.ndim >= 2
           and not n.endswith(tables)]
  ids = {id(p) for p in decay}
  no_decay = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
  return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                            {"params": decay, "weight_decay": o.weight_decay}],
                           lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, foreach=foreach)
