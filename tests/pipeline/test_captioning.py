"""captioning_ldrps: each family's prompt convention, greedy reproducible captions, the caption length, the
accelerator visit; with tiny random captioners of six families (tests/tiny_captioners.py) and BLIP."""

import pytest
import torch
from tiny_captioners import (
    tiny_blip2,
    tiny_florence2,
    tiny_idefics3,
    tiny_image,
    tiny_llava,
    tiny_paligemma,
    tiny_qwen2_vl,
)

from ldrps_pipeline.captioning_ldrps import (
    CAPTION_INSTRUCTION,
    FLORENCE2_CAPTION_TASKS,
    caption_images,
    caption_prompt,
    captioner_on,
)
from tiny_components import tiny_captioner

CHAT_FAMILIES = {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava, "idefics3": tiny_idefics3}
IMAGES = [tiny_image(40, 30, seed=0), tiny_image(24, 36, seed=1)]


def greedy_new_text(model, processor, image, prompt, max_new_tokens):
    """What the model writes after the prompt with plain greedy decoding, called directly."""
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs.pop("labels", None)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    if not model.config.is_encoder_decoder:
        output = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(output, skip_special_tokens=True)[0].strip()


@pytest.fixture(scope="module", params=sorted(CHAT_FAMILIES))
def chat_captioner(request):
    return CHAT_FAMILIES[request.param]()


def test_a_chat_template_gets_the_instruction_as_a_user_turn_with_the_image(chat_captioner):
    model, processor = chat_captioner
    expected = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_INSTRUCTION}]}],
        add_generation_prompt=True,
    )
    assert caption_prompt(model, processor) == expected
    custom = caption_prompt(model, processor, "Name the main object.")
    assert "Name the main object." in custom and CAPTION_INSTRUCTION not in custom
    # The processor expands the image placeholder into the vision tokens the model fills in.
    inputs = processor(images=IMAGES[0], text=expected, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() > 1


def test_chat_captions_are_the_greedy_continuation_without_the_prompt(chat_captioner):
    model, processor = chat_captioner
    captions = caption_images(model, processor, IMAGES, max_new_tokens=3)
    prompt = caption_prompt(model, processor)
    assert captions == [greedy_new_text(model, processor, image, prompt, 3) for image in IMAGES]


def test_captions_are_reproducible_and_independent_of_the_other_images(chat_captioner):
    model, processor = chat_captioner
    together = caption_images(model, processor, IMAGES, max_new_tokens=3)
    assert caption_images(model, processor, IMAGES, max_new_tokens=3) == together
    assert [caption_images(model, processor, [image], max_new_tokens=3)[0] for image in IMAGES] == together


def test_the_caption_length_is_settable():
    model, processor = tiny_qwen2_vl()
    prompt = caption_prompt(model, processor)
    for budget in (1, 5):
        assert caption_images(model, processor, IMAGES[:1], max_new_tokens=budget) == [
            greedy_new_text(model, processor, IMAGES[0], prompt, budget)
        ]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
            caption_images(model, processor, IMAGES, max_new_tokens=bad)


def test_a_bfloat16_captioner_gets_its_pixels_in_bfloat16():
    model, processor = tiny_llava()
    model.to(torch.bfloat16)
    prompt = caption_prompt(model, processor)
    assert caption_images(model, processor, IMAGES[:1], max_new_tokens=2) == [
        greedy_new_text(model, processor, IMAGES[0], prompt, 2)
    ]


def test_blip2_is_asked_question_answer():
    model, processor = tiny_blip2()
    assert caption_prompt(model, processor) == f"Question: {CAPTION_INSTRUCTION} Answer:"
    assert caption_prompt(model, processor, "What is shown?") == "Question: What is shown? Answer:"
    inputs = processor(images=IMAGES[0], text=caption_prompt(model, processor), return_tensors="pt")
    image_token = model.config.image_token_index
    assert inputs["input_ids"][0, : model.config.num_query_tokens].eq(image_token).all()
    captions = caption_images(model, processor, IMAGES, max_new_tokens=3)
    assert captions == [greedy_new_text(model, processor, i, caption_prompt(model, processor), 3) for i in IMAGES]


def test_florence2_gets_a_caption_task_token_and_refuses_free_text():
    model, processor = tiny_florence2()
    assert caption_prompt(model, processor) == "<DETAILED_CAPTION>"
    for task in FLORENCE2_CAPTION_TASKS:
        assert caption_prompt(model, processor, task) == task
    # Florence2Processor turns the task token into the question the model was trained on.
    inputs = processor(images=IMAGES[0], text="<DETAILED_CAPTION>", return_tensors="pt")
    assert "Describe in detail what is shown in the image." in processor.tokenizer.decode(inputs["input_ids"][0])
    with pytest.raises(ValueError, match="Florence-2 follows task tokens"):
        caption_prompt(model, processor, CAPTION_INSTRUCTION)
    # An encoder-decoder: the output does not repeat the prompt, and nothing is cut from it.
    captions = caption_images(model, processor, IMAGES, max_new_tokens=3)
    assert captions == [greedy_new_text(model, processor, image, "<DETAILED_CAPTION>", 3) for image in IMAGES]
    assert all(captions)


def test_paligemma_gets_a_task_prefix_and_refuses_free_text():
    model, processor = tiny_paligemma()
    assert caption_prompt(model, processor) == "<image>caption en"
    assert caption_prompt(model, processor, "describe en") == "<image>describe en"
    inputs = processor(images=IMAGES[0], text=caption_prompt(model, processor), return_tensors="pt")
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text == "<image>" * processor.image_seq_length + "<bos>caption en\n"
    with pytest.raises(ValueError, match="PaliGemma follows task prefixes"):
        caption_prompt(model, processor, CAPTION_INSTRUCTION)
    captions = caption_images(model, processor, IMAGES[:1], max_new_tokens=3)
    assert captions == [greedy_new_text(model, processor, IMAGES[0], "<image>caption en", 3)]


def test_blip_captions_the_image_alone_and_refuses_an_instruction(tmp_path):
    model, processor = tiny_captioner(str(tmp_path), word="dog")
    assert caption_prompt(model, processor) is None
    assert caption_images(model, processor, IMAGES, max_new_tokens=3) == ["dog dog dog"] * 2
    with pytest.raises(ValueError, match="takes no instruction"):
        caption_images(model, processor, IMAGES, instruction=CAPTION_INSTRUCTION)


@pytest.mark.parametrize("instruction", ["", "   ", 3])
def test_an_empty_or_non_text_instruction_is_refused(instruction):
    model, processor = tiny_llava()
    with pytest.raises(ValueError, match="non-empty string"):
        caption_prompt(model, processor, instruction)


class RecordedMoves(torch.nn.Module):
    """A module that records where it is sent instead of moving (no accelerator needed to test the visits)."""

    def __init__(self):
        super().__init__()
        self.moves = []
        self.device = torch.device("cpu")

    def to(self, device):
        self.moves.append(str(device))
        self.device = torch.device(device)
        return self


def test_captioner_on_an_accelerator_visits_once_per_block_and_comes_back_to_the_cpu():
    model = RecordedMoves()
    with captioner_on(model, "cuda"):
        assert model.moves == ["cuda"]
    assert model.moves == ["cuda", "cpu"]
    with pytest.raises(RuntimeError), captioner_on(model, torch.device("cuda:1")):
        raise RuntimeError("a failed caption")
    assert model.moves[2:] == ["cuda:1", "cpu"]


def test_captioner_on_leaves_cpu_models_and_offload_hooked_models_where_they_are():
    model = RecordedMoves()
    with captioner_on(model, "cpu"):
        pass
    model._hf_hook = object()  # what accelerate's cpu offload attaches: the hook moves the model itself
    with captioner_on(model, "cuda"):
        pass
    assert model.moves == []


def test_captioner_on_inside_an_outer_block_moves_nothing():
    model = RecordedMoves()
    with captioner_on(model, "cuda:0"):
        for _ in range(3):  # one caption per image of a folder run
            with captioner_on(model, "cuda:0"):
                pass
        assert model.moves == ["cuda:0"]
    assert model.moves == ["cuda:0", "cpu"]
