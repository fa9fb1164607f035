"""VQModel3D against the original VQModel: tiny goldens (indices exactly), chunked quantisation, layout, shapes."""

from __future__ import annotations

import pytest
import torch

from ld_augment.nets import VQ_RELEASED, VQ_TINY, VQConfig, VQModel3D

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_vq(load_tiny):
    tiny = load_tiny("vq")
    cfg = VQConfig.from_original_kwargs(tiny["config"]["constructor_kwargs"])
    assert cfg == VQ_TINY
    model = VQModel3D(cfg).eval()
    result = model.load_state_dict(tiny["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(tiny["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == tiny["config"]["param_count"]
    return model, tiny


def test_every_stored_output_is_reproduced(tiny_vq) -> None:
    model, tiny = tiny_vq
    x, ref = tiny["inputs"]["x"], tiny["outputs"]
    with torch.no_grad():
        h = model.encode(x)
        z_q, loss, info = model.quantize(h)
        recon, fwd_loss = model(x)
        ours = {
            "h_prequant": h, "z_quantized": z_q, "indices": info["indices"], "quant_loss": loss,
            "perplexity": info["perplexity"], "reconstruction": model.decode(h), "forward_qloss": fwd_loss,
            "z_from_indices": model.codebook_entry(ref["indices"]),
            "decoded_from_indices": model.decode_indices(ref["indices"]),
        }
    assert set(ours) == set(ref)
    assert torch.equal(ours["indices"], ref["indices"])
    for key, value in ours.items():
        assert value.shape == ref[key].shape, key
        assert (value.float() - ref[key].float()).abs().max().item() <= TOL, key
    assert torch.allclose(recon, ours["reconstruction"], atol=TOL)


def test_chunked_quantisation_is_exact(tiny_vq) -> None:
    model, tiny = tiny_vq
    with torch.no_grad():
        h = model.encode(tiny["inputs"]["x"])
        whole = model.quantize_latent(h)
        chunked = model.quantize_latent(h, chunk_vectors=97)  # not a divisor of 8*12*16
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[2]["indices"], chunked[2]["indices"])
    assert torch.equal(whole[1], chunked[1])


def test_quantizer_picks_the_nearest_code() -> None:
    model = VQModel3D(VQ_TINY).eval()
    codes = model.quantize.embedding.weight.detach()
    idx = torch.randint(0, VQ_TINY.n_embed, (1, 2, 3, 4))
    z = model.codebook_entry(idx) + 1e-4 * torch.randn(1, VQ_TINY.embed_dim, 2, 3, 4)
    z_q, _, info = model.quantize(z)
    assert torch.equal(info["indices"], idx)
    assert torch.allclose(z_q, codes[idx].movedim(-1, 1), atol=1e-6)


def test_released_key_layout_is_identical(load_layout) -> None:
    spec = load_layout("vq_model")
    with torch.device("meta"):
        model = VQModel3D(VQ_RELEASED)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == spec["entries"]
    assert sum(p.numel() for p in model.parameters()) == spec["param_count"]


def test_shapes_and_gradients_at_tiny_size() -> None:
    torch.manual_seed(0)
    model = VQModel3D(VQ_TINY)
    x = torch.rand(1, 1, 8, 12, 6, requires_grad=True)
    h = model.encode(x)
    assert h.shape == (1, 4, 4, 6, 3)
    recon, loss = model(x)
    assert recon.shape == x.shape and loss.ndim == 0
    (recon.mean() + loss).backward()  # straight-through: the encoder receives gradients
    assert model.encoder.conv_in.weight.grad is not None and x.grad is not None
    odd = model.encode(torch.rand(1, 1, 7, 9, 5))  # odd sizes round down (keep crops even)
    assert odd.shape[2:] == (3, 4, 2)
