"""load_captioner: a saved folder round trip, safetensors only, clear errors naming the captioner (before
any weights load where it can tell), the torchvision requirement; and the table of checked captioners."""

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny_captioners import tiny_blip2, tiny_idefics3, tiny_image, tiny_qwen2_vl
from transformers import BertConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from ldrps_pipeline.captioning_ldrps import caption_images
from ldrps_pipeline.hub import captioners
from ldrps_pipeline.hub.captioners import (
    CAPTIONERS,
    RECOMMENDED_CAPTIONER,
    captioner_table,
    load_captioner,
    processor_needs_torchvision,
)


def save(builder, folder):
    model, processor = builder()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.mark.parametrize("builder", [tiny_idefics3, tiny_blip2], ids=["idefics3", "blip2"])
def test_a_saved_captioner_loads_by_folder_and_captions_the_same(tmp_path, builder):
    model, processor = save(builder, tmp_path)
    loaded, loaded_processor = load_captioner(str(tmp_path), dtype=torch.bfloat16, device="cpu")
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu" and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    images = [tiny_image(), tiny_image(seed=1)]
    expected = caption_images(model.to(torch.bfloat16), processor, images, max_new_tokens=3)
    assert caption_images(loaded, loaded_processor, images, max_new_tokens=3) == expected


def test_weights_other_than_safetensors_are_refused(tmp_path):
    model, _ = save(tiny_idefics3, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match=rf"weights of captioner '{tmp_path}' \(safetensors only\)"):
        load_captioner(str(tmp_path))


def test_a_name_that_is_no_folder_and_no_hub_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="captioner folder /nonexistent/captioner does not exist"):
        load_captioner("/nonexistent/captioner")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_captioner(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="has no config.json"):
        load_captioner(str(tmp_path))


def test_an_unreachable_hub_id_is_an_os_error_naming_it(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what a machine without network gets
    with pytest.raises(OSError, match="cannot load captioner 'someone/no-such-captioner'"):
        load_captioner("someone/no-such-captioner")


def test_a_model_that_cannot_caption_is_refused_before_its_weights_load(tmp_path):
    BertConfig(num_hidden_layers=1).save_pretrained(tmp_path)  # config.json alone: nothing else is read
    with pytest.raises(ValueError, match=r"is a 'bert' model, not an image-text-to-text model"):
        load_captioner(str(tmp_path))


def test_remote_code_is_refused(tmp_path):
    save(tiny_idefics3, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomCaptioner"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ships its own modelling code"):
        load_captioner(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "internvl_chat"}))
    with pytest.raises(ValueError, match="not a model transformers knows without remote code"):
        load_captioner(str(tmp_path))


def test_a_processor_that_needs_torchvision_is_refused_by_name_when_it_is_missing(tmp_path, monkeypatch):
    model, _ = tiny_qwen2_vl()
    model.config.save_pretrained(tmp_path)  # config.json alone: the check comes before any other file is read
    monkeypatch.setattr(captioners, "torchvision_available", lambda: False)
    with pytest.raises(ImportError, match=r"captioner '.*' \(qwen2_vl\) needs torchvision, which is not installed"):
        load_captioner(str(tmp_path))
    # With torchvision, the processor files are looked for (and here, missing).
    monkeypatch.setattr(captioners, "torchvision_available", lambda: True)
    with pytest.raises(OSError, match="cannot load the processor of captioner"):
        load_captioner(str(tmp_path))


def test_the_video_capable_processors_are_the_ones_that_need_torchvision():
    assert {"qwen2_vl", "qwen2_5_vl", "internvl", "smolvlm"} == {
        family
        for family in ("qwen2_vl", "qwen2_5_vl", "internvl", "smolvlm", "idefics3", "llava", "blip-2", "florence2")
        if processor_needs_torchvision(family)
    }


def test_the_checked_captioners_table():
    assert CAPTIONERS[0].repo_id == RECOMMENDED_CAPTIONER
    assert not CAPTIONERS[0].needs_torchvision  # the recommended one works with the project's own dependencies
    assert len({c.repo_id for c in CAPTIONERS}) == len(CAPTIONERS)
    for choice in CAPTIONERS:
        assert choice.family in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES  # load_captioner accepts the family
        assert choice.bf16_memory_gb > choice.bf16_weights_gb == round(2 * choice.parameters_billion, 1)
    table = captioner_table().splitlines()
    assert len(table) == 2 + len(CAPTIONERS)
    assert all(f"`{c.repo_id}`" in row for c, row in zip(CAPTIONERS, table[2:], strict=True))


def test_the_readme_carries_the_captioner_table():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert captioner_table() in readme
