"""A tiny Hugging Face checkpoint folder built locally (nothing is downloaded): a random-weight Llama saved
with ``save_pretrained`` and a byte-level BPE tokenizer trained on a few sentences with ``tokenizers``."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = ["the quick brown fox jumps over the lazy dog", "membound compiles transformers for inference",
          "memory bound decoding reads every weight once", "hello world, hello tokens"] * 4


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_checkpoint(folder: Path) -> Path:
    """Write config.json, model.safetensors, generation_config.json and the tokenizer files into ``folder``."""
    import transformers as T

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = T.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
