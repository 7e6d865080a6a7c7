"""A tiny CoPE-A stand-in on disk: random Gemma-2 base + non-zero LoRA adapter + trained BPE.

Production loads google/gemma-2-9b + zentropi-ai/cope-a-9b with AutoTokenizer,
AutoModelForCausalLM and PeftModel.from_pretrained; this builds directories those same calls
load, in a few seconds and without the hub. Scores are meaningless but deterministic, and
spread out enough (large init range) that a padding or position bug changes them visibly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma2Config, Gemma2ForCausalLM

from models.cope_prompt import COPE_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
# Smaller than most test prompts, so sliding-window layers really slide in the tests.
SLIDING_WINDOW = 32

_CORPUS = [
    COPE_TEMPLATE,
    "The quick brown fox jumps over the lazy dog while the band plays on.",
    "Hate speech attacks people for who they are: race, religion, disability, gender.",
    "Harassment targets a person with insults, threats and unwanted contact.",
    "Nothing in this clip breaks a rule: a recipe for bread, flour, water, salt and time.",
    "Answer 1 if the content meets the criteria, and 0 if it does not. 0 1 10 01 2025.",
    "Transcripts come from short videos; speech recognition makes mistakes sometimes.",
]


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE trained on `corpus`, wrapped as transformers' fast tokenizer (what
    AutoTokenizer loads). Also builds the GPU bench's tokenizer (bench/gpu/bench_cope.py)."""
    try:
        from transformers import PreTrainedTokenizerFast as Fast
    except ImportError:  # transformers 5 renamed the class
        from transformers import TokenizersBackend as Fast  # type: ignore[attr-defined, no-redef]

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits split one by one (as in Gemma's vocabulary), so "0" and "1" stay single tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Gemma's tokenizer starts every sequence with <bos>; so does this one.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return Fast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")


def _tiny_config(tokenizer) -> Gemma2Config:
    return Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,  # one sliding-window layer, one global layer
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        sliding_window=SLIDING_WINDOW,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_cope(root: Path) -> tuple[Path, Path]:
    """Write a tiny base model (+ tokenizer) and a LoRA adapter under root; return (base, adapter)."""
    base_dir, adapter_dir = Path(root) / "tiny-gemma2", Path(root) / "tiny-cope-adapter"
    tokenizer = train_tokenizer(_CORPUS * 4, vocab_size=500)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(_tiny_config(tokenizer)).eval()
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    torch.manual_seed(1)
    # init_lora_weights=False: random A *and* B, so the adapter changes scores (B=0 would not).
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, lora).save_pretrained(str(adapter_dir))
    return base_dir, adapter_dir
