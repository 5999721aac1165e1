"""A small bilingual tokenizer for the toy zoo, trained with `tokenizers`.

Plain BPE on templated toy text learns whole Japanese sentences as single tokens, which makes
a Japanese answer one opaque symbol: nothing is shared between the question types and ROUGE
degenerates. So Japanese is split into single characters before BPE runs (no merge can
cross a character), and English is split at spaces and punctuation, which leaves BPE to learn
word pieces only. `<image>` is a special token the LLaVA processor expands into image slots.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE]  # ids 0..4, matching the model configs
# one Japanese character per pre-token: kana, CJK ideographs, full-width forms and punctuation
JAPANESE_CHAR = r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, split_digits: bool = False):
    """Train the BPE tokenizer and wrap it as a `PreTrainedTokenizerFast` (adds <s> in front).

    `split_digits` makes every digit its own token (as Llama/Mistral do), so arithmetic sees
    the digits of a number rather than an opaque number token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Split(Regex(JAPANESE_CHAR), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            *([pre_tokenizers.Digits(individual_digits=True)] if split_digits else []),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=256,
    )
