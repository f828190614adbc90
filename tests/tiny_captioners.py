"""Tiny random captioners of several families, built from configs, offline (no Hub download).

Each builder returns ``(model, processor)``: a model of a few thousand parameters with the
family's real transformers classes, and the family's real processor around a byte-level tokenizer
built in code (every byte one token, plus the family's special tokens), so that prompts, image
tokens and decoding run through the same code as a real checkpoint. The weights are random: the
captions are gibberish, but deterministic.
"""

import PIL.Image
import torch
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    SiglipImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

# A chat template in the Qwen2-VL / ChatML layout: an image placeholder, then the text, per turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ image_placeholder }}"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The LLaVA-1.5 layout: "USER: <image>\n<text> ASSISTANT:".
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# The Idefics3 / SmolVLM layout: "<|im_start|>User:<image><text><end_of_utterance>\nAssistant:".
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def byte_level_tokenizer(special_tokens: list[str], **kwargs) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with no merges (each byte one token) and ``special_tokens`` kept whole.

    The first special token is the end-of-text, padding and unknown token.
    """
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    for token in special_tokens:
        vocab[token] = len(vocab)
    end = special_tokens[0]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=end, eos_token=end, pad_token=end, **kwargs)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens], special_tokens=True)
    return tokenizer


def tiny_image(width: int = 40, height: int = 30, seed: int = 0) -> PIL.Image.Image:
    """A random RGB image."""
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8)
    return PIL.Image.fromarray(pixels.numpy())


def _tiny_llama_text(tokenizer, **overrides) -> dict:
    """A one-layer Llama-style text config over ``tokenizer``'s vocabulary."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    }


def _tiny_vit(image_size: int, patch_size: int, **overrides) -> dict:
    """A one-layer ViT-style vision config (CLIP, SigLIP, Idefics3, BLIP-2) seeing ``image_size`` px in ``patch_size`` px patches."""
    return {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        **overrides,
    }


def _built(model_class, config):
    torch.manual_seed(0)
    return model_class(config).eval()


def tiny_qwen2_vl() -> tuple:
    """A tiny Qwen2VLForConditionalGeneration and a Qwen2-VL processor with a ChatML chat template.

    transformers 5 cannot build ``Qwen2VLProcessor`` without torchvision (its video processor needs
    it, and the processor type-checks it even when absent), so the processor here is the real class
    with the video half left out; the image half, the chat template and the image tokens are Qwen2-VL's.
    """

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_level_tokenizer(specials)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    config = Qwen2VLConfig(
        text_config=_tiny_llama_text(
            tokenizer,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
        ),
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 16, "num_heads": 2, "patch_size": 14},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 84),
        tokenizer=tokenizer,
        chat_template=CHATML_TEMPLATE.replace("{{ image_placeholder }}", "<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return _built(Qwen2VLForConditionalGeneration, config), processor


def tiny_llava() -> tuple:
    """A tiny LlavaForConditionalGeneration (CLIP vision tower, Llama text model) and a LlavaProcessor
    with the LLaVA-1.5 chat template."""
    tokenizer = byte_level_tokenizer(["</s>", "<s>", "<image>"])
    config = LlavaConfig(
        text_config={
            "model_type": "llama",
            **_tiny_llama_text(tokenizer, bos_token_id=tokenizer.convert_tokens_to_ids("<s>")),
        },
        vision_config=_tiny_vit(28, 14, model_type="clip_vision_model", num_hidden_layers=2, projection_dim=16),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _built(LlavaForConditionalGeneration, config), processor


def tiny_idefics3() -> tuple:
    """A tiny Idefics3ForConditionalGeneration (the SmolVLM-Instruct architecture) and an Idefics3Processor
    that splits the image into 32 px tiles plus a global view, with the SmolVLM chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    specials += ["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = byte_level_tokenizer(specials, bos_token="<|im_start|>")
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            **_tiny_llama_text(
                tokenizer,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
            ),
        },
        vision_config=_tiny_vit(32, 8),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
    )
    return _built(Idefics3ForConditionalGeneration, config), processor


def tiny_blip2() -> tuple:
    """A tiny Blip2ForConditionalGeneration (ViT, Q-Former with two queries, OPT decoder) and a Blip2Processor."""
    tokenizer = byte_level_tokenizer(["</s>", "<image>"], bos_token="</s>")
    config = Blip2Config(
        vision_config=_tiny_vit(32, 16),
        qformer_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "encoder_hidden_size": 16,
            "vocab_size": 8,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "word_embed_proj_dim": 16,
            "ffn_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        num_query_tokens=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer, num_query_tokens=2
    )
    return _built(Blip2ForConditionalGeneration, config), processor


def tiny_paligemma() -> tuple:
    """A tiny PaliGemmaForConditionalGeneration (SigLIP vision tower, Gemma decoder) and a PaliGemmaProcessor."""
    tokenizer = byte_level_tokenizer(["<eos>", "<bos>", "<image>"], bos_token="<bos>")
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 4  # (32 / 16) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=_tiny_vit(32, 16, model_type="siglip_vision_model", projection_dim=16),
        text_config={
            "model_type": "gemma",
            **_tiny_llama_text(tokenizer, bos_token_id=tokenizer.bos_token_id, head_dim=8),
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=16,
        hidden_size=16,
    )
    return _built(PaliGemmaForConditionalGeneration, config), processor


def tiny_florence2() -> tuple:
    """A tiny Florence2ForConditionalGeneration (DaViT vision tower, BART encoder-decoder) and a Florence2Processor."""
    tokenizer = byte_level_tokenizer(
        ["</s>", "<s>", "<image>"], bos_token="<s>", extra_special_tokens={"image_token": "<image>"}
    )
    image_processor = CLIPImageProcessorPil(
        size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=False
    )
    image_processor.image_seq_length = 5  # a 2 x 2 feature map and its pooled token
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    config = Florence2Config(
        text_config={
            "model_type": "bart",
            "vocab_size": len(tokenizer),
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "decoder_start_token_id": tokenizer.eos_token_id,
            "forced_eos_token_id": None,
        },
        vision_config={
            "depths": (1, 1, 1, 1),
            "embed_dim": (8, 8, 8, 16),
            "num_heads": (1, 1, 1, 2),
            "num_groups": (1, 1, 1, 2),
            "window_size": 2,
            "projection_dim": 16,
            "drop_path_rate": 0.0,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _built(Florence2ForConditionalGeneration, config), processor
