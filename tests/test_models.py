"""The fusion models against the papers' equations, each written again here in the papers'
column notation (features as columns, X in R^{d x L}) with einsum and loops, on the
module's own (random) weights; and the padding contract for all nine models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from vafusion.learning.ccc import ccc_loss
from vafusion.models import FUSION_MODELS, build_fusion_model, config_section, settings_problems
from vafusion.models.av_fusion import AudioVisualFusion
from vafusion.models.cross_attention import CrossAttention
from vafusion.models.heads import FrameHead
from vafusion.models.iaca import IacaGate
from vafusion.models.joint_cross_attention import JointCrossAttention
from vafusion.models.recursive_joint_cross_attention import RecursiveJointCrossAttention
from vafusion.models.sequence import BiLstm
from vafusion.models.tcn_transformer import sinusoidal_positions

LEARNING = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())["learning"]
DIMS = {"iresnet50": 512, "vggish": 128, "mfcc": 39}
STREAMS = {"audio": ["vggish", "mfcc"], "visual": ["iresnet50"]}  # the default stream set, by modality


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)  # the comparisons below are to 1e-10
    yield
    torch.set_default_dtype(torch.float32)


def column_softmax(Z):
    """A[i, j] = exp(Z[i, j]) / sum_k exp(Z[k, j]), written out."""
    E = torch.exp(Z - Z.max())
    return E / E.sum(dim=0, keepdim=True)


# --- CA, Praveen & Alam Eq. 1-4 ------------------------------------------------------------------

def test_cross_attention_is_eq_1_to_4():
    torch.manual_seed(0)
    d, L = 6, 9
    ca = CrossAttention(d)
    audio, visual = torch.randn(2, L, d), torch.randn(2, L, d)
    out_a, out_v = ca(audio, visual)
    W = ca.W.detach()
    for b in range(2):
        Xa, Xv = audio[b].T, visual[b].T  # (d, L): columns are frames, as in the paper
        Z = torch.einsum("ki,kl,lj->ij", Xa, W, Xv)  # Z = X_a^T W X_v
        A_a, A_v = column_softmax(Z), column_softmax(Z.T)  # Eq. 1 (column-wise, as the text says)
        Xa_hat = torch.einsum("di,ij->dj", Xa, A_a)  # Eq. 2
        Xv_hat = torch.einsum("di,ij->dj", Xv, A_v)
        torch.testing.assert_close(out_a[b].T, torch.tanh(Xa + Xa_hat), rtol=0, atol=1e-10)  # Eq. 3
        torch.testing.assert_close(out_v[b].T, torch.tanh(Xv + Xv_hat), rtol=0, atol=1e-10)  # Eq. 4


# --- JCA (Praveen et al., T-BIOM 2023) -----------------------------------------------------------

def jca_by_the_paper(Xa, Xv, W_ja, W_jv, W_a, W_v, W_ca, W_cv, W_ha, W_hv):
    """Columns are frames. Returns X_att,a, X_att,v."""
    J = torch.cat([Xa, Xv], dim=0)  # J = [X_a; X_v]
    d = J.shape[0]
    C_a = torch.tanh(torch.einsum("ki,kl,lj->ij", Xa, W_ja, J) / math.sqrt(d))  # X_a^T W_ja J / sqrt(d)
    C_v = torch.tanh(torch.einsum("ki,kl,lj->ij", Xv, W_jv, J) / math.sqrt(d))
    H_a = torch.relu(W_a @ Xa + W_ca @ C_a.T)  # H_a = ReLU(W_a X_a + W_ca C_a^T)
    H_v = torch.relu(W_v @ Xv + W_cv @ C_v.T)
    return W_ha @ H_a + Xa, W_hv @ H_v + Xv  # X_att = W_h H + X


def jca_weights(jca):
    return [getattr(jca, n).detach() for n in ("W_ja", "W_jv", "W_a", "W_v", "W_ca", "W_cv", "W_ha", "W_hv")]


def test_joint_cross_attention_is_the_papers():
    torch.manual_seed(1)
    da, dv, k, L = 5, 7, 4, 8
    jca = JointCrossAttention(da, dv, k, L)
    assert jca.W_ja.shape == (da, da + dv) and jca.W_ca.shape == (k, L) and jca.W_ha.shape == (da, k)
    audio, visual = torch.randn(3, L, da), torch.randn(3, L, dv)
    out_a, out_v = jca(audio, visual)
    for b in range(3):
        ref_a, ref_v = jca_by_the_paper(audio[b].T, visual[b].T, *jca_weights(jca))
        torch.testing.assert_close(out_a[b].T, ref_a, rtol=0, atol=1e-10)
        torch.testing.assert_close(out_v[b].T, ref_v, rtol=0, atol=1e-10)


def test_jca_with_padding_equals_the_paper_on_the_real_frames():
    """Padded frames: their columns of C weigh nothing, i.e. the paper's equations on the
    n real frames with W_c cut to its first n columns."""
    torch.manual_seed(2)
    d, k, L, n = 4, 3, 10, 6
    jca = JointCrossAttention(d, d, k, L)
    audio, visual = torch.randn(1, L, d), torch.randn(1, L, d)
    padding = torch.arange(L)[None] >= n
    out_a, out_v = jca(audio, visual, padding)
    W = jca_weights(jca)
    W[4], W[5] = W[4][:, :n], W[5][:, :n]  # W_ca, W_cv over the real frames
    ref_a, ref_v = jca_by_the_paper(audio[0, :n].T, visual[0, :n].T, *W)
    torch.testing.assert_close(out_a[0, :n].T, ref_a, rtol=0, atol=1e-10)
    torch.testing.assert_close(out_v[0, :n].T, ref_v, rtol=0, atol=1e-10)


# --- RJCA (Praveen et al., ICASSP 2023) ----------------------------------------------------------

def test_rjca_recursion_has_its_own_weights_per_iteration():
    torch.manual_seed(3)
    d, k, L, T = 4, 3, 7, 3
    rjca = RecursiveJointCrossAttention(d, k, L, T)
    ids = {id(getattr(jca, "W_ja")) for jca in rjca.iterations}
    assert len(rjca.iterations) == T and len(ids) == T  # W^(t): one set per iteration, not shared
    audio, visual = torch.randn(2, L, d), torch.randn(2, L, d)
    Xa, Xv = rjca.encode(audio, visual)
    out_a, out_v = rjca(audio, visual)
    for b in range(2):
        a, v = Xa[b].T, Xv[b].T  # X^(0): the BLSTM outputs
        for jca in rjca.iterations:  # X^(t) = JCA^(t)(X^(t-1)), J^(t) from X^(t-1)
            a, v = jca_by_the_paper(a, v, *jca_weights(jca))
        torch.testing.assert_close(out_a[b].T, a, rtol=0, atol=1e-10)
        torch.testing.assert_close(out_v[b].T, v, rtol=0, atol=1e-10)


def test_blstm_runs_over_the_real_frames_only():
    torch.manual_seed(4)
    lstm = BiLstm(5, 8)
    x = torch.randn(2, 12, 5)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 7:] = True
    out = lstm(x, padding)
    alone = lstm.lstm(x[1:, :7])[0]  # the real frames as a sequence of their own
    torch.testing.assert_close(out[1, :7], alone[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0], lstm.lstm(x[:1])[0][0], rtol=0, atol=1e-12)
    assert out[1, 7:].abs().max() == 0
    with pytest.raises(ValueError, match="end of each window"):
        lstm(x, torch.roll(padding, 2, dims=1))  # padding in the middle is refused


# --- IACA, Praveen & Alam Eq. 5-9 ----------------------------------------------------------------

def test_iaca_gate_is_eq_5_to_9():
    torch.manual_seed(5)
    d, L, T, T_av = 6, 5, 0.3, 0.7
    gate = IacaGate(d, T, T_av)
    assert all((w == 0).all() for w in (gate.W_gl_a, gate.W_gl_v, gate.W_gl_av))  # gates start uniform
    with torch.no_grad():  # random gate weights, so that the check below sees every term
        for w in (gate.W_gl_a, gate.W_gl_v, gate.W_gl_av):
            w.normal_()
    Xa, Xv, Xatt_a, Xatt_v = (3 * torch.randn(1, L, d) for _ in range(4))
    fused, gates = gate(Xa, Xv, Xatt_a, Xatt_v)
    W_gl_a, W_gl_v, W_gl_av = gate.W_gl_a.detach(), gate.W_gl_v.detach(), gate.W_gl_av.detach()
    Wj, bj = gate.joint.weight.detach(), gate.joint.bias.detach()

    def unit(x):  # X^: the column over its Euclidean length
        return x / torch.sqrt((x * x).sum())

    for l in range(L):  # one frame (column) at a time
        xa, xv, xatt_a, xatt_v = Xa[0, l], Xv[0, l], Xatt_a[0, l], Xatt_v[0, l]
        W_go_a = unit(xatt_a) @ W_gl_a  # Eq. 5 on the unit-norm column (2 units, no bias)
        W_go_v = unit(xatt_v) @ W_gl_v
        G_a = torch.exp(W_go_a / T) / torch.exp(W_go_a / T).sum()  # Eq. 6
        G_v = torch.exp(W_go_v / T) / torch.exp(W_go_v / T).sum()
        x_gv = torch.relu(xv * G_v[0] + xatt_v * G_v[1])  # Eq. 7: the features themselves, not normalised
        x_ga = torch.relu(xa * G_a[0] + xatt_a * G_a[1])  # Eq. 8
        x_gav = Wj @ torch.cat([x_ga, x_gv]) + bj  # joint representation: concatenation + FC
        W_go_av = torch.cat([unit(x_ga), unit(x_gv), unit(x_gav)]) @ W_gl_av
        G_av = torch.exp(W_go_av / T_av) / torch.exp(W_go_av / T_av).sum()  # stage 2: its own temperature
        x_g = torch.relu(x_ga * G_av[0] + x_gv * G_av[1] + x_gav * G_av[2])  # Eq. 9
        torch.testing.assert_close(fused[0, l], x_g, rtol=0, atol=1e-10)
        torch.testing.assert_close(gates["audio"][0, l], G_a, rtol=0, atol=1e-12)
        torch.testing.assert_close(gates["visual"][0, l], G_v, rtol=0, atol=1e-12)
        torch.testing.assert_close(gates["fusion"][0, l], G_av, rtol=0, atol=1e-12)


def configured_learning(preset: str | None) -> dict:
    """config.yaml's learning section, or with a preset merged over it (as --configfile does)."""
    from snakemake.utils import update_config

    repo = Path(__file__).parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    if preset is not None:
        update_config(config, yaml.safe_load((repo / "presets" / preset).read_text()))
    return config["learning"]


def saturated_share(gates: torch.Tensor) -> float:
    """Share of frames whose largest gate weight exceeds 0.99 (a one-hot choice)."""
    return float((gates.max(dim=-1).values > 0.99).double().mean())


@pytest.mark.parametrize("preset", [None, "praveen-alam2024-iaca.yaml"], ids=["config", "iaca-preset"])
@pytest.mark.parametrize("name", ["ca_iaca", "jca_iaca", "rjca_iaca", "tca_iaca"])
def test_iaca_gates_do_not_start_one_hot_at_the_configured_sizes(name, preset):
    """At initialisation the gates choose nothing yet: fewer than 5 % of frames have a
    weight above 0.99, with the configured (zero) gate weights and with Xavier-uniform ones
    (nn.Linear's scale, what the authors' gate starts from), on standardised features (what
    the normaliser feeds the model). Unnormalised gate inputs at T = 0.1 put 36-85 % of the
    frames above 0.99 before any training."""
    torch.manual_seed(8)
    learning = configured_learning(preset)
    window = min(learning["train"]["window"], 128)  # the share does not depend on the length
    model = build_fusion_model(name, DIMS, learning["cross_attention"], window=window, streams=STREAMS).eval()
    streams = {k: torch.randn(4, window, d) for k, d in DIMS.items()}
    for init in ("configured", "xavier"):
        if init == "xavier":
            with torch.no_grad():
                for w in (model.gate.W_gl_a, model.gate.W_gl_v, model.gate.W_gl_av):
                    torch.nn.init.xavier_uniform_(w)
        with torch.no_grad():
            _, gates = model(streams, return_gates=True)
        for stage, g in gates.items():
            assert saturated_share(g) < 0.05, (init, stage, saturated_share(g))
        if init == "configured":  # uniform: 1/2 and 1/3
            torch.testing.assert_close(gates["fusion"], torch.full_like(gates["fusion"], 1 / 3))
            torch.testing.assert_close(gates["audio"], torch.full_like(gates["audio"], 1 / 2))


@pytest.mark.parametrize("attention", ["ca", "jca", "rjca", "tca"])
def test_iaca_gates_the_cross_attentions_own_input(attention):
    """Eq. 7-8's X_m is what the cross-attention attended over: for RJCA its BLSTM outputs,
    for CA and TCA the projected features with their clip context."""
    torch.manual_seed(6)
    model = build_fusion_model(f"{attention}_iaca", DIMS, LEARNING["cross_attention"], window=11,
                               streams=STREAMS).eval()
    seen = {}
    model.gate.register_forward_hook(lambda mod, args, out: seen.update(args=args))
    streams = {k: torch.randn(2, 11, d) for k, d in DIMS.items()}
    model(streams)
    audio = model.project_audio(torch.cat([streams["vggish"], streams["mfcc"]], -1))
    visual = model.project_visual(streams["iresnet50"])
    if attention == "rjca":
        audio, visual = model.attention.encode(audio, visual)
    if attention in ("ca", "tca"):
        audio, visual = model.context_audio(audio), model.context_visual(visual)
    torch.testing.assert_close(seen["args"][0], audio, rtol=0, atol=1e-12)
    torch.testing.assert_close(seen["args"][1], visual, rtol=0, atol=1e-12)


def test_rjca_has_the_joint_blstm_with_and_without_iaca():
    for name in ("rjca", "rjca_iaca"):
        model = build_fusion_model(name, DIMS, LEARNING["cross_attention"], window=9, streams=STREAMS)
        assert isinstance(model, AudioVisualFusion) and isinstance(model.fused_lstm, BiLstm)
    assert build_fusion_model("jca", DIMS, LEARNING["cross_attention"], window=9, streams=STREAMS).fused_lstm is None


# --- Yu et al.: head and positions ---------------------------------------------------------------

def test_frame_head_is_fc_bn_fc_tanh_with_statistics_of_real_frames():
    torch.manual_seed(7)
    head = FrameHead(6, 4).train()
    x = torch.randn(2, 10, 6)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 4:] = True
    out = head(x, padding)
    h = torch.einsum("od,bld->blo", head.fc1.weight.detach(), x) + head.fc1.bias.detach()  # FC
    real = h[~padding]  # (14, 4)
    mean, var = real.mean(0), real.var(0, unbiased=False)
    bn = (h - mean) / torch.sqrt(var + head.bn.eps) * head.bn.weight.detach() + head.bn.bias.detach()  # BN
    ref = torch.tanh(torch.einsum("oh,blh->blo", head.fc2.weight.detach(), bn) + head.fc2.bias.detach())  # FC, tanh
    torch.testing.assert_close(out[~padding], ref[~padding], rtol=0, atol=1e-10)
    # the running statistics were updated from the real frames only
    torch.testing.assert_close(head.bn.running_mean, 0.9 * torch.zeros(4) + 0.1 * mean, rtol=0, atol=1e-12)
    assert not any(isinstance(m, (torch.nn.LeakyReLU, torch.nn.ReLU)) for m in head.modules())


def test_sinusoidal_positions_follow_vaswani():
    table = sinusoidal_positions(13, 8)
    for pos in range(13):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def test_transformer_input_is_eq_1_plus_positions():
    """The encoder sees W f_t + b + PE_t with f = concat(f^_1, f^_2, f^_3) (Eq. 1), each f^_i
    the output of Bai et al.'s TCN on stream i, all written again here from the module's
    parameters without calling its TCNs, projection or position table: block i convolves
    with dilation 2**i over frames t - (k-1) 2**i .. t only, weights g v / ||v|| per output
    channel, ReLU after each convolution, then ReLU(out + x), x 1x1-convolved when the widths
    differ. The widths (some blocks change them, some keep them, each stream its own) and
    the window (20 frames, over twice the widest kernel span (k-1) 2**2 = 8) make a wrong
    order, dilation, causality or residual show."""
    torch.manual_seed(8)
    order = ("iresnet50", "vggish", "mfcc")  # f^_1, f^_2, f^_3: the visual branch, then the audio ones
    dims = {"iresnet50": 7, "vggish": 6, "mfcc": 5}
    channels = {"iresnet50": (6, 6, 4), "vggish": (3, 5, 5), "mfcc": (5, 4, 4)}
    k, B, L = 3, 2, 20
    hp = {**LEARNING["tcn_transformer"], "tcn_channels": channels, "kernel_size": k, "d_model": 8, "n_heads": 2}
    model = build_fusion_model("tcn_transformer", dims, hp, window=L, streams=STREAMS).eval()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda mod, args: seen.update(inp=args[0]))
    streams = {name: torch.randn(B, L, dims[name]) for name in order}
    with torch.no_grad():
        model(streams)

    def causal_conv(conv, x, dilation):
        """x: (C_in, L) -> (C_out, L); out_t = b + sum_j W_j x_{t - (k-1-j) dilation}, x_s = 0 for s < 0."""
        g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
        w = g * v / v.flatten(1).norm(dim=1)[:, None, None]  # weight normalisation: (out, in, k)
        assert w.shape[2] == k
        out = conv.bias[:, None].expand(w.shape[0], x.shape[1]).clone()
        for j in range(k):
            shift = (k - 1 - j) * dilation  # tap j looks shift frames back
            past = torch.zeros_like(x)
            past[:, shift:] = x[:, : x.shape[1] - shift]
            out += torch.einsum("oi,il->ol", w[:, :, j], past)
        return out

    def tcn(blocks, x):
        for i, block in enumerate(blocks):
            h = torch.relu(causal_conv(block.conv1, x, 2**i))
            h = torch.relu(causal_conv(block.conv2, h, 2**i))
            if x.shape[0] != h.shape[0]:  # widths differ: the 1x1 downsample
                x = block.residual.weight[:, :, 0] @ x + block.residual.bias[:, None]
            x = torch.relu(h + x)
        return x  # (C_last, L)

    d = hp["d_model"]
    positions = torch.tensor([[math.sin(t / 10000 ** (c / d)) if c % 2 == 0 else math.cos(t / 10000 ** ((c - 1) / d))
                               for c in range(d)] for t in range(L)])
    W, b = model.project.weight.detach(), model.project.bias.detach()
    with torch.no_grad():
        for n in range(B):
            f = torch.cat([tcn(model.tcns[name], streams[name][n].T) for name in order])  # Eq. 1: (sum C, L)
            assert f.shape[0] == sum(c[-1] for c in channels.values())
            expected = (W @ f + b[:, None]).T + positions  # (L, d)
            torch.testing.assert_close(seen["inp"][n], expected, rtol=0, atol=1e-6)
            # to 1e-10 where float64 reaches: the position table is float32 (a buffer), so the
            # rest is compared with the table's own values taken off
            torch.testing.assert_close(seen["inp"][n] - model.positions[:L], expected - positions, rtol=0, atol=1e-10)


# --- padding never changes a real frame, for all nine models -------------------------------------

@pytest.mark.parametrize("name", FUSION_MODELS)
def test_padding_never_changes_a_real_frame(name):
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(9)
    L = 30
    model = build_fusion_model(name, DIMS, LEARNING[config_section(name)], window=L, streams=STREAMS)
    streams = {k: torch.randn(3, L, d) for k, d in DIMS.items()}
    padding = torch.zeros(3, L, dtype=torch.bool)
    padding[1, 21:] = True
    padding[2, 8:] = True
    target = torch.rand(3, L, 2) * 2 - 1
    valid = (~padding)[..., None].expand(3, L, 2)

    def with_noise(scale):
        return {k: torch.where(padding[..., None], torch.randn_like(v) * scale, v) for k, v in streams.items()}

    model.eval()
    with torch.no_grad():
        clean, noisy = model(with_noise(0.0), padding), model(with_noise(100.0), padding)
    torch.testing.assert_close(clean[~padding], noisy[~padding], rtol=0, atol=1e-5)

    model.train()
    grads = []
    for scale in (0.0, 100.0):
        model.zero_grad()
        torch.manual_seed(10)  # the same dropout masks
        ccc_loss(model(with_noise(scale), padding), target, valid).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# --- presets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted((Path(__file__).parents[1] / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_validate_and_build_their_models(preset):
    """``--configfile presets/<paper>.yaml`` merged over config.yaml passes the schema, every
    value carries a source, and each of its models builds at the preset's window."""
    import jsonschema
    from snakemake.utils import update_config

    from vafusion.learning.experiments import experiment_problems

    repo = Path(__file__).parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    update_config(config, yaml.safe_load(preset.read_text()))
    from conftest import workflow_schema

    jsonschema.validate(config, workflow_schema(config))
    value_lines = [line for line in preset.read_text().splitlines()
                   if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":")]
    assert value_lines and [line for line in value_lines if "# [" not in line] == []
    learning = config["learning"]
    assert settings_problems(learning) == []
    assert experiment_problems(config) == []  # its experiments and ensembles name real runs
    for run in learning["models"]:
        name = run.partition("@")[0]  # <model>@<stream set>
        build_fusion_model(name, DIMS, learning[config_section(name)], window=learning["train"]["window"],
                           streams=STREAMS)


@pytest.mark.parametrize("section, change, key", [
    ("tcn_transformer", {"n_heads": 3}, "learning.tcn_transformer.n_heads"),
    ("cross_attention", {"tca_heads": 3}, "learning.cross_attention.tca_heads"),
])
def test_settings_that_cannot_build_a_model_are_reported_at_parse_time(section, change, key):
    """Each reported combination really breaks the model (so the check is needed), and the
    report names the key; the defaults pass."""
    learning = {**LEARNING, "models": list(FUSION_MODELS), section: {**LEARNING[section], **change}}
    assert settings_problems(LEARNING) == []
    problems = settings_problems(learning)
    assert len(problems) == 1 and problems[0].startswith(f"{key}: 3 does not divide") and "train_model" in problems[0]
    model = "tcn_transformer" if section == "tcn_transformer" else "tca"
    with pytest.raises(AssertionError, match="divisible"):
        build_fusion_model(model, DIMS, learning[section], window=LEARNING["train"]["window"], streams=STREAMS)


def test_windows_that_skip_frames_are_reported():
    train = {**LEARNING["train"], "hop": LEARNING["train"]["window"] + 1}
    problems = settings_problems({**LEARNING, "train": train})
    assert [p.split(":")[0] for p in problems] == ["learning.train.hop"]
    # a warm-up as long as the training is unusual but works: not reported
    assert settings_problems({**LEARNING, "train": {**LEARNING["train"], "warmup_epochs": 2, "max_epochs": 2}}) == []


def test_tcn_block_is_bai_et_al_and_causal():
    """out_t = ReLU(ReLU(conv2(ReLU(conv1(x))))_t + res(x)_t), each conv weight g v / ||v||
    (weight normalisation per output channel), looking at frames t - (k-1) d .. t only."""
    from vafusion.models.tcn_transformer import TemporalBlock

    torch.manual_seed(11)
    k, dil, L = 3, 2, 15
    block = TemporalBlock(4, 6, k, dil, dropout=0.0).eval()
    x = torch.randn(1, 4, L)

    def causal_conv(conv, inp):
        g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
        w = g * v / v.flatten(1).norm(dim=1)[:, None, None]  # (out, in, k)
        out = torch.zeros(w.shape[0], inp.shape[1])
        for t in range(inp.shape[1]):
            for j in range(k):
                s = t - (k - 1 - j) * dil  # tap j looks (k-1-j)*dilation frames back
                if s >= 0:
                    out[:, t] += w[:, :, j] @ inp[:, s]
        return out + conv.bias[:, None]

    h = torch.relu(causal_conv(block.conv1, x[0]))
    h = torch.relu(causal_conv(block.conv2, h))
    residual = block.residual.weight[:, :, 0] @ x[0] + block.residual.bias[:, None]
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0], torch.relu(h + residual), rtol=0, atol=1e-10)


def test_every_config_key_has_a_description():
    """Of the workflow's schema: the file's keys and every built-in stream's (the registry's)."""
    from conftest import workflow_schema

    schema = workflow_schema(yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text()))
    undescribed = []

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                undescribed.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")

    walk(schema, "")
    assert undescribed == []


# --- temporal context for CA and TCA (the papers' clip backbones) ---------------------------------

def test_clip_context_is_a_centred_residual_convolution_over_real_frames():
    """x'_l = x_l + ReLU(b + sum_{k=-K..K} W_k x_{l+k}), frames outside the trial and padded
    frames counting as 0, written with loops over frames and taps."""
    from vafusion.models.clip_context import ClipContext

    torch.manual_seed(3)
    d, frames, L = 4, 5, 12
    context = ClipContext(d, frames)
    x = torch.randn(2, L, d)
    padding = torch.zeros(2, L, dtype=torch.bool)
    padding[1, 9:] = True
    with torch.no_grad():
        out = context(x, padding)
    W, b, K = context.conv.weight, context.conv.bias, frames // 2  # W: (d_out, d_in, frames)
    for n in range(2):
        real = int((~padding[n]).sum())
        for l in range(L):
            if l >= real:
                assert torch.all(out[n, l] == 0)
                continue
            acc = b.clone()
            for k in range(-K, K + 1):
                if 0 <= l + k < real:  # neighbours past the trial's end or padded are 0
                    acc = acc + torch.einsum("oi,i->o", W[:, :, k + K], x[n, l + k])
            torch.testing.assert_close(out[n, l], x[n, l] + torch.relu(acc), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_every_model_sees_frame_order(name):
    """Permuting a window's frames must not merely permute the outputs: with per-frame
    features a model needs its own temporal part (the papers' features come from clips)."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(5)
    L = 24
    model = build_fusion_model(name, DIMS, LEARNING[config_section(name)], window=L, streams=STREAMS).eval()
    streams = {k: torch.randn(2, L, d) for k, d in DIMS.items()}
    order = torch.randperm(L)
    with torch.no_grad():
        out = model(streams)
        permuted = model({k: v[:, order] for k, v in streams.items()})
    assert (permuted - out[:, order]).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["ca", "tca"])
def test_without_clip_context_ca_and_tca_are_blind_to_frame_order(attention):
    """What the context fixes: with clip_frames 1 (per-frame features as they come) the
    outputs of a permuted window are the permuted outputs; with context they are not, and a
    padded window still gives its real frames what the unpadded trial gives them."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(6)
    L, real = 24, 17
    streams = {k: torch.randn(1, L, d) for k, d in DIMS.items()}
    order = torch.randperm(L)
    for frames, blind in ((1, True), (LEARNING["cross_attention"]["clip_frames"], False)):
        hp = {**LEARNING["cross_attention"], "clip_frames": frames}
        model = build_fusion_model(attention, DIMS, hp, window=L, streams=STREAMS).eval()
        with torch.no_grad():
            out = model(streams)
            permuted = model({k: v[:, order] for k, v in streams.items()})
            padding = torch.zeros(1, L, dtype=torch.bool)
            padding[0, real:] = True
            padded = model(streams, padding)[:, :real]
            alone = model({k: v[:, :real] for k, v in streams.items()})
        assert torch.allclose(permuted, out[:, order], atol=1e-5) == blind
        torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
