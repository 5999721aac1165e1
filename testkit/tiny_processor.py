"""Tiny tokenizers and processors that fit `testkit.tiny` models.

Real LLaVA checkpoints come with a SentencePiece tokenizer and a CLIP image processor; tests
need the same classes at toy size, without a hub. The tokenizer is character-level over a
fixed alphabet (lower-case ASCII, digits, some punctuation, and common kana/kanji) so that
Japanese prompts and answers round-trip, with `<image>` at the config's `image_token_index`.
"""

from __future__ import annotations

from pathlib import Path

# Ids 0-3 are fixed by tiny_mistral_config (pad 0, bos 1, eos 2) plus <unk>.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
IMAGE_TOKEN = "<image>"

_ASCII = " abcdefghijklmnopqrstuvwxyz0123456789.,?!:[]/'-\n"
_JAPANESE = (
    "。、？！「」ー"
    "あいうえおかきくけこさしすせそたちつてとなにのはまみむもやよらりるれろわをんがでだ"
    "アイカキクスタテトドナノマラルンシャツ"
    "白黒赤青犬猫車人何色画像写真質問答日本語男女空山木花上下大小"
)
# a stable chat template (Mistral-style [INST] ... [/INST]) with LLaVA's image placeholder
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}</s>{% endif %}{% endfor %}"
)


def tiny_alphabet(size: int) -> list[str]:
    """The first `size` characters of the tiny alphabet (ASCII first, then Japanese)."""
    chars = list(dict.fromkeys(_ASCII + _JAPANESE))
    if size > len(chars):
        raise ValueError(f"tiny alphabet has only {len(chars)} characters, {size} requested")
    return chars[:size]


def tiny_tokenizer(vocab_size: int = 132, image_token_index: int | None = None):
    """A character-level `PreTrainedTokenizerFast` with exactly `vocab_size` ids.

    `<image>` takes `image_token_index` (default: the last id, as in `tiny_llava`); the rest
    are special tokens and characters. Upper-case input is lower-cased (the alphabet is small).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    image_token_index = vocab_size - 1 if image_token_index is None else image_token_index
    n_chars = vocab_size - len(SPECIAL_TOKENS) - 1
    chars = iter(tiny_alphabet(n_chars))
    vocab: dict[str, int] = {}
    for index in range(vocab_size):
        if index < len(SPECIAL_TOKENS):
            vocab[SPECIAL_TOKENS[index]] = index
        elif index == image_token_index:
            vocab[IMAGE_TOKEN] = index
        else:
            vocab[next(chars)] = index

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    backend.add_special_tokens([*SPECIAL_TOKENS, IMAGE_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_processor(vocab_size: int = 132, next_version: bool = False, image_size: int = 32):
    """A LlavaProcessor (or LlavaNextProcessor) matching `tiny_llava(vocab_size, next_version)`."""
    from transformers import CLIPImageProcessor, LlavaNextImageProcessor, LlavaNextProcessor
    from transformers import LlavaProcessor

    tokenizer = tiny_tokenizer(vocab_size)
    common = dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    if next_version:
        image_processor = LlavaNextImageProcessor(
            image_grid_pinpoints=[[image_size, image_size], [image_size, 2 * image_size],
                                  [2 * image_size, image_size]],
            **common,
        )
        cls = LlavaNextProcessor
    else:
        image_processor = CLIPImageProcessor(**common)
        cls = LlavaProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP tower's CLS token
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_vlm(model, path: str | Path, next_version: bool = False) -> Path:
    """Save a tiny LLaVA with a matching processor, loadable by `from_pretrained(path)`."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    vocab_size = model.config.text_config.vocab_size
    tiny_processor(vocab_size, next_version=next_version).save_pretrained(path)
    return path


# The two tiny random LLaVA models that eval/configs/fixture.yaml evaluates (by `path:`).
EVAL_FIXTURE_MODELS = {
    "tiny-llava-a": dict(seed=1, scale=0.05),
    "tiny-llava-next-b": dict(seed=2, scale=0.05, next_version=True),
}
EVAL_FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "runs" / "eval" / "fixture_models"


def save_eval_fixture_models(root: str | Path = EVAL_FIXTURE_ROOT) -> dict[str, Path]:
    """Save the models of eval/configs/fixture.yaml (model + processor) as `root/<name>`."""
    from testkit.tiny import tiny_llava

    root = Path(root)
    return {name: save_tiny_vlm(tiny_llava(**kwargs), root / name,
                                next_version=bool(kwargs.get("next_version")))
            for name, kwargs in EVAL_FIXTURE_MODELS.items()}


if __name__ == "__main__":  # python -m testkit.tiny_processor [ROOT]: fixture.yaml's models
    import sys

    for saved in save_eval_fixture_models(*sys.argv[1:2]).values():
        print(saved)
