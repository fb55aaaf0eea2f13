"""Tests of the transformers backbones (BLIP-2, CLIP + combiner), the target-pad transform and
the model registry. Tiny randomly initialised configurations only: no downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from qure.models import (  # noqa: E402
    Blip2QuRe,
    ClipCombiner,
    TargetPad,
    TinyCIRModel,
    build_model,
    build_transform,
    load_model,
    save_model,
    target_pad,
)
from qure.models.preprocess import BLIP2_MEAN, BLIP2_STD  # noqa: E402

VOCAB = "make it red blue green shirt dress with short long sleeves and a collar".split()
TEXTS = ["make it red", "blue shirt with short sleeves", "a green dress", "unknownword collar"]
SIZE = 32  # tiny configs' image size


def blip2(seed: int = 0, **kwargs) -> Blip2QuRe:
    torch.manual_seed(seed)
    return Blip2QuRe(config={"vocab": VOCAB}, **kwargs)


def clip(seed: int = 0, **kwargs) -> ClipCombiner:
    torch.manual_seed(seed)
    return ClipCombiner(config={"vocab": VOCAB}, **kwargs)


BUILDERS = {"blip2": blip2, "clip": clip}


@pytest.fixture(scope="module", params=["blip2", "clip"])
def model(request):
    return BUILDERS[request.param]().eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def text_ids(model, texts=TEXTS) -> torch.Tensor:
    return torch.from_numpy(model.tokenize(texts))


# --------------------------------------------------------------------------------------------
# preprocessing


def test_target_pad_pads_the_short_side_to_the_ratio():
    wide = Image.new("RGB", (300, 100), (255, 255, 255))
    padded = target_pad(wide, 1.25)
    assert padded.size == (300, 240)  # 70 black rows above and below
    a = np.asarray(padded)
    assert (a[:70] == 0).all() and (a[-70:] == 0).all() and (a[70:170] == 255).all()
    tall = target_pad(Image.new("RGB", (100, 300), (255, 255, 255)), 1.25)
    assert tall.size == (240, 300)
    assert (np.asarray(tall)[:, :70] == 0).all()


def test_target_pad_leaves_square_and_near_square_images_alone():
    square = Image.new("RGB", (50, 50), (10, 20, 30))
    assert target_pad(square, 1.25) is square
    mild = Image.new("RGB", (120, 100))  # ratio 1.2 <= 1.25
    assert target_pad(mild, 1.25) is mild
    with pytest.raises(ValueError):
        target_pad(square, 0.5)


def test_transform_output_shape_and_normalisation():
    mean, std = np.array(BLIP2_MEAN), np.array(BLIP2_STD)
    transform = build_transform(24, BLIP2_MEAN, BLIP2_STD, target_pad=1.25)
    assert isinstance(transform, TargetPad)
    gray = Image.new("RGB", (40, 40), (128, 128, 128))
    out = transform(gray)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    expected = (128 / 255 - mean) / std
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    # A wide white image: black bands from the padding at the top and bottom of the crop.
    white = transform(Image.new("RGB", (300, 100), (255, 255, 255)))
    np.testing.assert_allclose(white[:, 0, 12].numpy(), -mean / std, atol=1e-4)
    np.testing.assert_allclose(white[:, 12, 12].numpy(), (1 - mean) / std, atol=1e-4)
    plain = TargetPad(ratio=None, size=24, mean=BLIP2_MEAN, std=BLIP2_STD)
    np.testing.assert_allclose(
        plain(Image.new("RGB", (300, 100), (255, 255, 255)))[:, 0, 12].numpy(),
        (1 - mean) / std,
        atol=1e-4,
    )
    # Grayscale input becomes RGB; non-square output sizes of a resize are centre-cropped.
    assert transform(Image.new("L", (50, 30), 7)).shape == (3, 24, 24)


def test_models_carry_matching_preprocess(model):
    assert model.image_size == SIZE
    image = Image.new("RGB", (64, 48), (200, 10, 10))
    x = model.preprocess(image)
    assert x.shape == (3, SIZE, SIZE)
    assert model.encode_images(x[None]).shape[0] == 1


# --------------------------------------------------------------------------------------------
# shapes, norms, tokenisation


def test_shapes_and_unit_norms(model):
    n_tokens = 4 if isinstance(model, Blip2QuRe) else 1
    with torch.no_grad():
        images = model.encode_images(pixels(3))
        queries = model.encode_queries(pixels(4, 1), text_ids(model))
    assert images.shape == (3, n_tokens, 16) and queries.shape == (4, 16)
    assert model.n_tokens == n_tokens and model.dim == 16
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3, n_tokens))
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(4))
    t = model.temperature
    assert t.requires_grad and abs(float(t.detach()) - 0.07) < 1e-4


def test_blip2_image_tokens_differ():
    m = blip2().eval()
    with torch.no_grad():
        tokens = m.encode_images(pixels(2))
    assert (tokens[:, 0] - tokens[:, 1]).abs().max() > 1e-3  # query tokens not all zero


def test_tokenize_pads_with_minus_one(model):
    ids = model.tokenize(TEXTS)
    assert ids.dtype == np.int64 and ids.shape[0] == len(TEXTS)
    lengths = (ids >= 0).sum(axis=1)
    assert ids.shape[1] == lengths.max()
    for row, n in zip(ids, lengths):
        assert (row[:n] >= 0).all() and (row[n:] == -1).all()
    assert lengths[0] == 5  # [CLS]/<bos> make it red [SEP]/<eos>
    assert model.tokenize(TEXTS, max_len=4).shape == (len(TEXTS), 4)
    assert model.tokenize([]).shape == (0, 0)
    with pytest.raises(TypeError):
        model.tokenize("a single string")


def test_padding_does_not_change_the_query(model):
    ids = text_ids(model)
    longer = torch.cat([ids, torch.full((len(ids), 6), -1)], dim=1)
    ref = pixels(len(ids), 2)
    with torch.no_grad():
        q = model.encode_queries(ref, ids)
        q_long = model.encode_queries(ref, longer)
        one = model.encode_queries(ref[:1], ids[:1, : int((ids[0] >= 0).sum())])
    torch.testing.assert_close(q, q_long, atol=1e-5, rtol=0)
    torch.testing.assert_close(q[:1], one, atol=1e-5, rtol=0)
    # The text is read: a different text changes the query.
    other = text_ids(model, ["long dress", "red collar", "green", "short and long"])
    with torch.no_grad():
        q_other = model.encode_queries(ref, other)
    assert (q - q_other).abs().max() > 1e-4


def test_bad_inputs_are_rejected(model):
    ids = text_ids(model)
    with pytest.raises(ValueError, match="reference images"):
        model.encode_queries(pixels(2), ids)
    with pytest.raises(ValueError, match="preprocessed float pixels"):
        model.encode_images(torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="vocabulary"):
        model.encode_queries(pixels(1), torch.tensor([[2, 10_000]]))


# --------------------------------------------------------------------------------------------
# training behaviour


@pytest.mark.parametrize("name", ["blip2", "clip"])
def test_gradients_reach_the_head_not_the_frozen_vision_encoder(name):
    m = BUILDERS[name]()
    m.train()
    vision = m.blip.vision_model if name == "blip2" else m.clip.vision_model
    assert not vision.training  # stays in eval mode under model.train()
    ids = text_ids(m)
    queries = m.encode_queries(pixels(4, 1), ids)
    tokens = m.encode_images(pixels(4, 2))
    scores = torch.einsum("bd,ntd->bnt", queries, tokens).amax(dim=-1)
    loss = -(scores.diagonal() / m.temperature).log_softmax(0).sum()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in vision.parameters())
    if name == "blip2":
        trained = [m.blip.qformer, m.blip.vision_projection, m.blip.text_projection]
        assert m.blip.query_tokens.grad is not None and m.blip.query_tokens.grad.abs().sum() > 0
    else:
        trained = [m.combiner, m.clip.text_model]
    for module in trained:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    temp = m.temp if name == "blip2" else m.log_temperature
    assert temp.grad is not None


def test_unfrozen_blip2_vision_gets_gradients():
    m = blip2(freeze_vision=False).train()
    assert m.blip.vision_model.training
    m.encode_images(pixels(2)).sum().backward()
    assert m.blip.vision_model.embeddings.patch_embedding.weight.grad is not None
    with pytest.raises(ValueError):
        blip2(freeze_vision=False, vision_fp16=True)


def test_blip2_fp16_vision_encoder():
    m = blip2(vision_fp16=True).eval()
    assert m.blip.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    assert m.blip.qformer.layernorm.weight.dtype == torch.float32
    with torch.no_grad():
        out = m.encode_queries(pixels(2), text_ids(m, TEXTS[:2]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["blip2", "clip"])
def test_deterministic_given_the_seed(name):
    a, b = BUILDERS[name](seed=3).eval(), BUILDERS[name](seed=3).eval()
    x, ids = pixels(2), text_ids(a, TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_images(x), b.encode_images(x), atol=0, rtol=0)
        torch.testing.assert_close(
            a.encode_queries(x, ids), b.encode_queries(x, ids), atol=0, rtol=0
        )
        c = BUILDERS[name](seed=4).eval()
        assert (a.encode_images(x) - c.encode_images(x)).abs().max() > 1e-4


def test_combiner_dropout_only_in_training():
    m = clip()
    x, ids = pixels(4), text_ids(m)
    m.eval()
    with torch.no_grad():
        q1, q2 = m.encode_queries(x, ids), m.encode_queries(x, ids)
    torch.testing.assert_close(q1, q2, atol=0, rtol=0)
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        q3 = m.encode_queries(x, ids)
    assert (q1 - q3).abs().max() > 1e-4
    torch.testing.assert_close(q3.norm(dim=-1), torch.ones(4))


# --------------------------------------------------------------------------------------------
# registry, save/load, local pretrained folders


@pytest.mark.parametrize("backbone", ["blip2", "clip", "tiny"])
def test_build_model_and_save_load_round_trip(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    if backbone == "tiny":
        spec = {"backbone": "tiny", "config": {"vocab_size": 12, "dim": 8, "tokens": 3}}
        x = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
        ids = torch.tensor([[3, 4, 0], [5, 0, 0]])
    else:
        spec = {"backbone": backbone, "pretrained": None, "config": {"vocab": VOCAB}}
        x = pixels(2)
    model = build_model(spec).eval()
    expected = {"blip2": Blip2QuRe, "clip": ClipCombiner, "tiny": TinyCIRModel}[backbone]
    assert type(model) is expected
    if backbone != "tiny":
        ids = text_ids(model, TEXTS[:2])
    with torch.no_grad():
        images, queries = model.encode_images(x), model.encode_queries(x, ids)
    folder = save_model(model, tmp_path / "saved")
    spec_json = json.loads((folder / "spec.json").read_text())
    assert spec_json["backbone"] == backbone and (folder / "model.safetensors").is_file()
    loaded = load_model(folder)
    assert type(loaded) is expected and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(x), images, atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_queries(x, ids), queries, atol=0, rtol=0)
    if backbone != "tiny":
        np.testing.assert_array_equal(loaded.tokenize(TEXTS), model.tokenize(TEXTS))


def test_build_model_rejects_bad_specs():
    with pytest.raises(ValueError, match="backbone"):
        build_model({"backbone": "vit"})
    with pytest.raises(ValueError, match="vocab_size"):
        build_model({"backbone": "tiny", "config": {}})
    with pytest.raises(ValueError, match="exactly one"):
        build_model({"backbone": "blip2"})
    with pytest.raises(ValueError, match="unknown"):
        build_model({"backbone": "blip2", "config": {"vocab": VOCAB, "layers": 2}})


def test_blip2_from_a_local_pretrained_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = blip2(seed=5).eval()
    source.blip.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    loaded = build_model({"backbone": "blip2", "pretrained": str(tmp_path)}).eval()
    x, ids = pixels(2), text_ids(source, TEXTS[:2])
    np.testing.assert_array_equal(loaded.tokenize(TEXTS), source.tokenize(TEXTS))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(x), source.encode_images(x))
        torch.testing.assert_close(loaded.encode_queries(x, ids), source.encode_queries(x, ids))
    assert not any(p.requires_grad for p in loaded.blip.vision_model.parameters())


def test_clip_from_a_local_pretrained_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = clip(seed=6).eval()
    source.clip.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    loaded = ClipCombiner(str(tmp_path)).eval()
    loaded.combiner.load_state_dict(source.combiner.state_dict())
    x, ids = pixels(2), text_ids(source, TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(x), source.encode_images(x))
        torch.testing.assert_close(loaded.encode_queries(x, ids), source.encode_queries(x, ids))


def test_folder_without_tokenizer_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blip2().blip.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        Blip2QuRe(str(tmp_path))


def test_trains_with_the_qure_trainer(tmp_path):
    """Two epochs of ``qure.train`` on float pixel arrays, evaluation features included."""
    from qure.train import CIRTrainData, TrainConfig, encode_split, train

    m = blip2(seed=1)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((12, 3, SIZE, SIZE)).astype(np.float32)
    target = np.arange(8)
    reference = (target + 3) % 12
    texts = [TEXTS[i % len(TEXTS)] for i in range(8)]
    data = CIRTrainData(images=pool, reference=reference, text=m.tokenize(texts), target=target)
    result = train(
        m, data, TrainConfig(method="qure", epochs=2, batch_size=4, n_def=2, amp=False, lr=1e-3)
    )
    assert len(result.history) == 2
    queries, gallery = encode_split(m, pool, reference, data.text, batch=6)
    assert queries.shape == (8, 16) and gallery.shape == (12, 4, 16)
