"""Writes data/encoders/: small random-initialised backbones in every file format and naming layout
the Rust loaders accept, with the reference implementations' outputs for them (the parity tests in
stages/torch/tests/parity.rs read these).

References: HF transformers `BertModel` / `Dinov2Model` (the installed version, recorded in
data/encoders/versions.json), torchxrayvision 1.5.7 `autoencoders.py` (read verbatim from the wheel that
scripts/test-assets.sh caches in .cache/wheels), and the original's preprocessing (reference B.2) with
OpenCV and numpy.

Run: .venv/bin/pip install transformers; scripts/test-assets.sh; .venv/bin/python
tools/encoders_make_fixtures.py. Deterministic (fixed seeds); every file stays well under 1 MB.
"""
import glob
import json
import os
import shutil
import sys
import types
import zipfile

import cv2
import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from machine import machine
from transformers import BertConfig, BertForPreTraining, BertModel, BertTokenizerFast, Dinov2Config, Dinov2Model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "data", "encoders")
WHEELS = os.path.join(ROOT, ".cache", "wheels")

# A tiny uncased WordPiece vocabulary: specials first (ids deliberately not BERT's 0/100/101/102/103,
# so nothing may assume them), then characters, words of the test texts, and continuation pieces.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-/%")
WORDS = """the a an is are was of and or no not with without in on at to for there that this
today very happy person dog sunny day heart size normal lungs clear lung left right lower upper lobe
pleural effusion pneumothorax pneumonia opacity consolidation focal mild moderate severe cardiomegaly
stable unchanged compared prior study chest radiograph view pa ap lateral edema atelectasis
silhouette mediastinal contours within limits acute process cardiopulmonary seen evidence of""".split()
PIECES = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##s", "##ed", "##ing", "##ly", "##ity"]

TEXTS = [
    "That is a happy person",
    "That is a happy dog",
    "Today is a sunny day",
    "",
    "No acute cardiopulmonary process. Heart size is normal; lungs are clear.",
    "Mild cardiomegaly, UNCHANGED compared with the prior study. Café-au-lait zzyzx!",
    # Longer than max_length once tokenised: exercises truncation (112 tokens with [CLS]/[SEP]).
    " ".join(["left lower lobe opacity with small pleural effusion"] * 20),
]


def rand_(model, scale, seed):
    """Overwrites every parameter with N(0, scale²) (LayerNorm weights around 1): HF's init is
    too close to zero for a parity test to mean much."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith("LayerNorm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight") \
                    or name.endswith("layernorm.weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def write_vocab(path):
    with open(path, "w") as f:
        for tok in SPECIALS + CHARS + WORDS + PIECES:
            f.write(tok + "\n")


def bert_reference(model, tokenizer, texts, max_length=112):
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"])
    h = out.last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return {
        "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
        "token_type_ids": enc["token_type_ids"].to(torch.int64).contiguous(),
        "pooler": out.pooler_output.contiguous(),
        "cls": h[:, 0].contiguous(),
        "mean": mean.contiguous(),
        "tokens": (h * m).contiguous(),  # padded positions zeroed, as the tokens table stores them
    }


def make_bert():
    config = BertConfig(vocab_size=len(SPECIALS + CHARS + WORDS + PIECES), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=0, hidden_act="gelu")
    torch.manual_seed(0)
    full = BertForPreTraining(config).eval()
    rand_(full, 0.2, seed=1)
    base = full.bert
    vocab_dir = os.path.join(OUT, "_vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    write_vocab(os.path.join(vocab_dir, "vocab.txt"))
    # (transformers 5: the constructor takes `vocab=`; from_pretrained reads vocab.txt as AutoTokenizer does)
    tokenizer = BertTokenizerFast.from_pretrained(vocab_dir, do_lower_case=True)
    ref = bert_reference(base, tokenizer, TEXTS)
    # A second batch without the long text: padding to a different length must not change results.
    ref_short = bert_reference(base, tokenizer, TEXTS[:3])
    ref["pooler_short"] = ref_short["pooler"]

    # 1. model.safetensors, no prefix (BertModel.save_pretrained), tokenizer.json.
    d = os.path.join(OUT, "bert-safetensors")
    shutil.rmtree(d, ignore_errors=True)
    base.save_pretrained(d)
    tokenizer.save_pretrained(d)
    # 2. sharded safetensors with `bert.` prefix and heads (BertForPreTraining), vocab.txt only.
    d = os.path.join(OUT, "bert-sharded")
    shutil.rmtree(d, ignore_errors=True)
    full.save_pretrained(d, max_shard_size="60KB")
    shutil.copy(os.path.join(vocab_dir, "vocab.txt"), d)
    # 3. pytorch_model.bin (zip pickle) with `bert.` prefix and `cls.*` heads; config.json without
    #    model_type (as old hub configs, e.g. BioBERT's), vocab.txt + tokenizer_config.json.
    d = os.path.join(OUT, "bert-bin")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.save(full.state_dict(), os.path.join(d, "pytorch_model.bin"))
    cfg = config.to_dict()
    cfg.pop("model_type", None)
    cfg.pop("transformers_version", None)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    shutil.copy(os.path.join(vocab_dir, "vocab.txt"), d)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
    # 4. legacy (pre-1.6, non-zip) pickle, TF-era LayerNorm names (gamma/beta), model_type cxr-bert
    #    (CXR-BERT's config, which the original loads as a plain BertModel).
    d = os.path.join(OUT, "bert-bin-legacy")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sd = {}
    for k, v in full.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        sd[k] = v
    torch.save(sd, os.path.join(d, "pytorch_model.bin"), _use_new_zipfile_serialization=False)
    cfg = config.to_dict()
    cfg["model_type"] = "cxr-bert"
    cfg.pop("transformers_version", None)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    shutil.copy(os.path.join(vocab_dir, "vocab.txt"), d)
    shutil.rmtree(vocab_dir)

    save_file(ref, os.path.join(OUT, "bert-reference.safetensors"))
    with open(os.path.join(OUT, "bert-texts.json"), "w") as f:
        json.dump(TEXTS, f, indent=1, ensure_ascii=False)


def make_dinov2():
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=70,
                          patch_size=14, layerscale_value=0.5)
    torch.manual_seed(0)
    model = Dinov2Model(config).eval()
    rand_(model, 0.2, seed=2)
    g = torch.Generator().manual_seed(3)
    ref = {}
    # 70 px = the position grid (5×5, no interpolation); 56 px shrinks it to 4×4; 98×84 grows it,
    # non-square (7×6).
    for name, (b, h, w) in {"s70": (1, 70, 70), "s56": (2, 56, 56), "s98x84": (1, 98, 84)}.items():
        x = torch.randn((b, 3, h, w), generator=g)
        with torch.no_grad():
            out = model(pixel_values=x)
        ref[f"{name}_pixels"] = x.contiguous()
        ref[f"{name}_cls"] = out.pooler_output.contiguous()
        ref[f"{name}_tokens"] = out.last_hidden_state[:, 1:].contiguous()
    # 1. HF save_pretrained: model.safetensors in the published layout (attention.attention.query...).
    d = os.path.join(OUT, "dinov2")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    # 2. The same weights under transformers 5's in-memory names (attention.q_proj, ...) with a
    #    `dinov2.` prefix (as in Dinov2ForImageClassification), as pytorch_model.bin.
    d = os.path.join(OUT, "dinov2-renamed")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sd = {}
    for k, v in model.state_dict().items():
        k = (k.replace("attention.attention.query", "attention.q_proj")
             .replace("attention.attention.key", "attention.k_proj")
             .replace("attention.attention.value", "attention.v_proj")
             .replace("attention.output.dense", "attention.o_proj"))
        sd["dinov2." + k] = v
    sd["classifier.weight"] = torch.zeros(3, 64)
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    shutil.copy(os.path.join(OUT, "dinov2", "config.json"), d)
    save_file(ref, os.path.join(OUT, "dinov2-reference.safetensors"))


def load_xrv_autoencoders():
    """torchxrayvision 1.5.7's autoencoders.py, verbatim from the wheel, with its `utils` import
    stubbed (only the weight download uses it)."""
    wheels = glob.glob(os.path.join(WHEELS, "torchxrayvision-1.5.7-*.whl"))
    if not wheels:
        sys.exit("torchxrayvision 1.5.7 wheel missing: run scripts/test-assets.sh")
    with zipfile.ZipFile(wheels[0]) as z:
        source = z.read("torchxrayvision/autoencoders.py").decode()
    pkg = types.ModuleType("xrv_stub")
    pkg.__path__ = []
    sys.modules["xrv_stub"] = pkg
    sys.modules["xrv_stub.utils"] = types.ModuleType("xrv_stub.utils")
    mod = types.ModuleType("xrv_stub.autoencoders")
    mod.__package__ = "xrv_stub"
    sys.modules["xrv_stub.autoencoders"] = mod  # so that pickling the whole module finds its classes
    exec(compile(source, "torchxrayvision/autoencoders.py", "exec"), mod.__dict__)
    return mod


def small_resnet_ae_class(ae):
    class SmallResNetAE(ae._ResNetAE):
        """ResNetAE101's encoder with narrower stages and fewer blocks so that the fixture is small:
        xrv's own Bottleneck, _make_downlayer and encode(); only the widths differ (the Rust side
        reads widths and block counts from the weights)."""

        def __init__(self):
            torch.nn.Module.__init__(self)
            self.in_channels = 8
            self.conv1 = torch.nn.Conv2d(1, 8, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(8)
            self.relu = torch.nn.ReLU()
            self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_downlayer(ae.Bottleneck, 4, 2)
            self.layer2 = self._make_downlayer(ae.Bottleneck, 8, 2, stride=2)
            self.layer3 = self._make_downlayer(ae.Bottleneck, 8, 3, stride=2)
            self.layer4 = self._make_downlayer(ae.Bottleneck, 4, 2, stride=6)
            self.weights = None

    SmallResNetAE.__module__ = "__main__"
    SmallResNetAE.__qualname__ = "SmallResNetAE"
    return SmallResNetAE


SmallResNetAE = None


def make_resnet_ae():
    ae = load_xrv_autoencoders()

    global SmallResNetAE
    SmallResNetAE = small_resnet_ae_class(ae)
    torch.manual_seed(0)
    model = SmallResNetAE()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # conv weights: He-like scale keeps activations bounded over the blocks
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    model.eval()
    x = (torch.rand((2, 1, 224, 224), generator=g) * 2 - 1) * 1024
    with torch.no_grad():
        z = model.encode(x)
    ref = {"pixels": x.contiguous(), "z": z.contiguous(), "mean": z.flatten(2).mean(2).contiguous()}
    save_file(ref, os.path.join(OUT, "resnet-ae-reference.safetensors"))
    d = os.path.join(OUT, "resnet-ae")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sd = dict(model.state_dict())
    # The published checkpoint also holds the decoder; the encoder must ignore it.
    sd["uplayer1.0.conv1.weight"] = torch.zeros(2, 16, 1, 1)
    sd["conv1_1.weight"] = torch.zeros(64, 1, 1, 1)
    # A state dict as the published `.pt` (zip pickle), the same as a legacy pickle, and the
    # whole module pickled (what `torch.save(model)` writes), so the converter handles each.
    torch.save(sd, os.path.join(d, "state-dict.pt"))
    torch.save(sd, os.path.join(d, "state-dict-legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(model, os.path.join(d, "module-legacy.pt"), _use_new_zipfile_serialization=False)


def make_preprocess():
    """One gray PNG (portrait, so padding applies) and the original's preprocessing of it."""
    rng = np.random.RandomState(11)
    h, w = 300, 260
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.clip(120 + 70 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
    cv2.imwrite(os.path.join(OUT, "preprocess-input.png"), img)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_resize_fixture import resize_img

    ref = {}
    # 256 → 224 is the original's pre-training setting; 98 → 70 keeps the normalised tensors small.
    for imsize, crop in [(256, 224), (98, 70)]:
        x = resize_img(img, imsize)
        rgb = np.stack([x, x, x], axis=-1)  # PIL .convert("RGB") of a gray image
        # DINOv2: torchvision CenterCrop (round((h - crop) / 2)), ToTensor (/255 in float32), Normalize.
        top = int(round((imsize - crop) / 2.0))
        crop8 = rgb[top:top + crop, top:top + crop]
        ref[f"crop_{imsize}_{crop}"] = torch.from_numpy(crop8[:, :, 0].copy())
        if crop <= 70:
            c = torch.from_numpy(crop8.copy()).permute(2, 0, 1).float().div(255)
            for name, mean, std in [("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                    ("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]:
                m = torch.tensor(mean).view(3, 1, 1)
                s = torch.tensor(std).view(3, 1, 1)
                ref[f"dinov2_{name}_{imsize}_{crop}"] = c.sub(m).div(s).contiguous()
        # ResNet-AE (AutoEncoderDataTransforms): xrv normalize to [-1024, 1024], channel 0,
        # XRayCenterCrop, XRayResizer(crop, engine="cv2").
        a = (2 * (rgb.astype(np.float32) / 255) - 1.0) * 1024
        a = a[None, :, :, 0]
        _, yy_, xx_ = a.shape
        cs = min(yy_, xx_)
        sx, sy = xx_ // 2 - cs // 2, yy_ // 2 - cs // 2
        a = a[:, sy:sy + cs, sx:sx + cs]
        a = cv2.resize(a[0], (crop, crop), interpolation=cv2.INTER_AREA).reshape(1, crop, crop).astype(np.float32)
        ref[f"resnet_ae_{imsize}_{crop}"] = torch.from_numpy(a).contiguous()
    save_file(ref, os.path.join(OUT, "preprocess-reference.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    make_bert()
    make_dinov2()
    make_resnet_ae()
    make_preprocess()
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "opencv": cv2.__version__, "numpy": np.__version__, "torchxrayvision": "1.5.7",
                   "machine": machine()}, f, indent=1)
    for root, _, files in os.walk(OUT):
        for name in files:
            p = os.path.join(root, name)
            assert os.path.getsize(p) < 1 << 20, f"{p} is over 1 MB"
    print(f"fixtures written to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
