"""The VGG test protocol (archdsl.evaluation, `archdsl eval`) on tiny image folders."""

import math
import re
import struct
import zlib

import pytest
import torch
from PIL import Image

import archdsl
from archdsl import evaluation as ev
from archdsl.cli import main


# Two conv stages and two fc layers: the fc layers see a 16x8x8 map at 32x32.
TINY = """net tiny(classes=2) : 3x32x32 {
    conv3-8; maxpool
    conv3-16; maxpool
    fc-24; dropout; fc-{classes}; softmax
}
"""
# Global pooling, then the classifier: the ResNet-style head.
POOLED = """net pooled(classes=2) : 3x32x32 {
    conv3-4 act=none; gap; fc-{classes}; softmax
}
"""
COLOURS = {"blue": (20, 40, 230), "red": (230, 30, 20)}  # sorted: blue is class 0, red class 1


def write_spec(tmp_path, text, name):
    path = tmp_path / f"{name}.arch"
    path.write_text(text)
    return path


def write_images(root, sizes=((40, 36), (36, 52))):
    """Two classes x len(sizes) PNG images of the class colour with some noise, sizes as given."""
    gen = torch.Generator().manual_seed(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            pixels = torch.tensor(colour).view(1, 1, 3) + torch.randint(-20, 20, (h, w, 3), generator=gen)
            Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(root / name / f"{i}.png")
    (root / "red" / "notes.txt").write_text("not an image")
    return root


def always_class_0(text):
    """Weights under which the net scores class 0 highest on every input."""
    model = archdsl.compile(archdsl.loads(text))
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, 0.0]))
    return model.state_dict()


def colour_classifier():
    """POOLED weights that read the class off the mean colour: red minus blue."""
    model = archdsl.compile(archdsl.loads(POOLED))
    with torch.no_grad():
        conv = model.conv1
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            conv.weight[c, c, 1, 1] = 1.0  # channels 0..2 copy R, G, B
        model.fc1.weight.zero_()
        model.fc1.bias.zero_()
        model.fc1.weight[0, 0], model.fc1.weight[0, 2] = -0.05, 0.05  # blue
        model.fc1.weight[1, 0], model.fc1.weight[1, 2] = 0.05, -0.05  # red
    return model.state_dict()


def run_eval(capsys, *args):
    code = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    rows = {}
    for line in captured.out.splitlines():
        match = re.match(r"^(dense \+ multi-crop|multi-crop|dense)\b.*?(\d+)\s+([\d.]+) %\s+(?:([\d.]+) %|n/a.*)$",
                         line)
        if match:  # top-5 error None where there are too few classes for one
            rows[match[1]] = (int(match[2]), float(match[3]), None if match[4] is None else float(match[4]))
    return code, rows, captured


# -- the command ------------------------------------------------------------------------------

def test_eval_command_always_class_0_is_50_percent_wrong(tmp_path, capsys):
    spec = write_spec(tmp_path, TINY, "tiny")
    data = write_images(tmp_path / "images")
    torch.save(always_class_0(TINY), tmp_path / "w.pt")
    code, rows, captured = run_eval(capsys, spec, "--weights", tmp_path / "w.pt", "--data", data,
                                    "--scales", "32,40,48", "--combine")
    assert code == 0, captured.err
    assert set(rows) == {"dense", "multi-crop", "dense + multi-crop"}
    for images, top1, top5 in rows.values():
        assert images == 4 and top1 == 50.0 and top5 is None  # two classes: no top-5 error to speak of
    assert "multi-crop (150 crops)" in captured.out
    assert captured.out.count("n/a (2 classes)") == 3 and " 0.00 %" not in captured.out


def test_eval_command_colour_classifier_is_right_everywhere(tmp_path, capsys):
    spec = write_spec(tmp_path, POOLED, "pooled")
    data = write_images(tmp_path / "images")
    torch.save(colour_classifier(), tmp_path / "w.pt")
    code, rows, captured = run_eval(capsys, spec, "--weights", tmp_path / "w.pt", "--data", data,
                                    "--scales", "32,48", "--combine", "--batch", "7")
    assert code == 0, captured.err
    assert {k: v[1] for k, v in rows.items()} == {"dense": 0.0, "multi-crop": 0.0, "dense + multi-crop": 0.0}


def test_eval_command_random_weights_safetensors_multi_crop_only(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch", reason="the .safetensors path needs safetensors")
    spec = write_spec(tmp_path, TINY.replace("classes=2", "classes=7"), "tiny")
    data = write_images(tmp_path / "images")
    for name in ("c", "d", "e", "f", "g"):  # classes without images: 7 folders for 7 classes
        (data / name).mkdir()
    torch.manual_seed(0)
    state = archdsl.compile(spec).state_dict()
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    code, rows, captured = run_eval(capsys, spec, "--weights", tmp_path / "w.safetensors", "--data", data,
                                    "--scales", "36", "--multi-crop", "--mean", "120,120,120", "--std", "60,60,60")
    assert code == 0, captured.err
    assert list(rows) == ["multi-crop"] and "(50 crops)" in captured.out
    images, top1, top5 = rows["multi-crop"]
    assert images == 4 and 0 <= top5 <= top1 <= 100 and top1 in (0, 25, 50, 75, 100)  # 7 classes: top-5 counts


@pytest.mark.parametrize("args, message", [
    (["--scales", "24"], "at least the net's input size 32"),
    (["--data", "MISSING"], "no image folder"),
    (["--weights", "WRONG"], "do not fit net 'tiny'"),
    (["--device", "cuda:0"], "CUDA"),
])
def test_eval_command_errors_exit_2(tmp_path, capsys, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    spec = write_spec(tmp_path, TINY, "tiny")
    data = write_images(tmp_path / "images")
    torch.save(always_class_0(TINY), tmp_path / "w.pt")
    torch.save(archdsl.compile(archdsl.loads(TINY, classes=3)).state_dict(), tmp_path / "wrong.pt")
    options = {"--weights": str(tmp_path / "w.pt"), "--data": str(data), "--scales": "32"}
    key, value = args
    options[key] = {"MISSING": str(tmp_path / "missing"), "WRONG": str(tmp_path / "wrong.pt")}.get(value, value)
    code = main(["eval", str(spec), *[x for kv in options.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


# -- the library ------------------------------------------------------------------------------

def test_image_folder_sorted_classes_and_image_files_only(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "images" / "blue" / "x.JPEG").write_bytes(b"")
    classes, samples = ev.image_folder(tmp_path / "images")
    assert classes == ["blue", "red"]
    assert [(p.name, label) for p, label in samples] == [
        ("0.png", 0), ("1.png", 0), ("x.JPEG", 0), ("0.png", 1), ("1.png", 1)]
    with pytest.raises(ev.EvalError, match="cannot read image"):
        ev.load_image(tmp_path / "images" / "blue" / "x.JPEG")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ev.EvalError, match="no image files"):
        ev.image_folder(tmp_path / "empty")


def test_rescale_is_isotropic_to_the_smallest_side():
    img = Image.new("RGB", (300, 200))
    assert ev.rescale(img, 256).size == (384, 256)
    assert ev.rescale(Image.new("RGB", (200, 301)), 100).size == (100, 150)


def test_to_tensor_subtracts_the_mean_and_divides_by_std():
    img = Image.new("RGB", (3, 2), (124, 117, 104))
    x = ev.to_tensor(img)
    assert x.shape == (3, 2, 3)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([0.32, 0.221, 0.061]), rtol=0, atol=1e-4)
    y = ev.to_tensor(img, mean=(0, 0, 0), std=(2, 4, 8))
    torch.testing.assert_close(y[:, 1, 2], torch.tensor([62.0, 29.25, 13.0]))


def test_crop_offsets_span_the_image():
    assert ev.crop_offsets(256, 224, 5) == [0, 8, 16, 24, 32]
    assert ev.crop_offsets(224, 224, 5) == [0] * 5
    assert ev.crop_offsets(300, 224, 1) == [38]


def test_multi_crop_runs_150_crops_over_3_scales():
    ev_ = ev.Evaluator(archdsl.loads(TINY), always_class_0(TINY), methods=["multi-crop"], batch=16)
    seen = []
    ev_.fc.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    p = ev_.multi_crop(Image.new("RGB", (50, 40), (10, 200, 30)), [32, 40, 48])
    assert sum(s[0] for s in seen) == 150 == ev_.crops_per_image([32, 40, 48])
    assert all(s[1:] == (3, 32, 32) for s in seen) and max(s[0] for s in seen) == 16
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_dense_equals_multi_crop_when_the_image_is_the_input_size():
    # A square image at Q = 32: the dense map is 1x1 and all 25 crops are the whole image.
    torch.manual_seed(1)
    state = archdsl.compile(archdsl.loads(TINY)).state_dict()
    evaluator = ev.Evaluator(archdsl.loads(TINY), state, methods=["dense", "multi-crop"])
    img = Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy())
    dense, crops = evaluator.dense(img, [32]), evaluator.multi_crop(img, [32])
    torch.testing.assert_close(dense, crops, rtol=1e-5, atol=1e-7)
    assert (dense - 0.5).abs().max() > 1e-4  # the two classes are told apart at all


def test_dense_posteriors_average_spatial_scores_then_softmax_then_flips():
    # The pooled net's dense score map averages to the FC net's scores on the whole image.
    torch.manual_seed(2)
    graph = archdsl.loads(POOLED)
    state = archdsl.compile(graph).state_dict()
    evaluator = ev.Evaluator(graph, state, methods=["dense"])
    img = Image.fromarray(torch.randint(0, 255, (40, 56, 3), dtype=torch.uint8).numpy())
    fc = archdsl.compile(graph, softmax=True).eval()  # ends in softmax; pools globally at any size
    fc.load_state_dict(state)
    x = ev.to_tensor(ev.rescale(img, 48))
    with torch.no_grad():
        expected = fc(torch.stack([x, x.flip(-1)])).mean(0).double()
    torch.testing.assert_close(evaluator.dense(img, [48]), expected, rtol=1e-5, atol=1e-7)


def test_load_weights_torch_wrapped_and_not_a_state_dict(tmp_path):
    state = {"a.weight": torch.ones(2, 2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert ev.load_weights(tmp_path / "ckpt.pth").keys() == {"a.weight"}
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ev.EvalError, match="does not hold a state dict"):
        ev.load_weights(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ev.EvalError, match="cannot read weights"):
        ev.load_weights(tmp_path / "junk.pt")


def test_evaluate_library_call_without_progress(tmp_path):
    data = write_images(tmp_path / "images")
    results = ev.evaluate(archdsl.loads(POOLED), colour_classifier(), data, scales=(32,), progress=False)
    assert [(r.method, r.images, r.top1, math.isnan(r.top5), r.classes) for r in results] == [
        ("dense", 4, 0.0, True, 2)]  # two classes: no top-5 error
    with pytest.raises(ev.EvalError, match="3 class folders"):
        (data / "zebra").mkdir()
        Image.new("RGB", (32, 32)).save(data / "zebra" / "z.png")
        ev.evaluate(archdsl.loads(POOLED), colour_classifier(), data, scales=(32,), progress=False)


# -- inputs that do not fit -------------------------------------------------------------------

def test_class_folders_must_match_the_net_classes_both_ways(tmp_path):
    data = write_images(tmp_path / "images")  # two class folders
    graph = archdsl.loads(POOLED, classes=3)
    state = archdsl.compile(graph).state_dict()
    with pytest.raises(ev.EvalError, match="2 class folders, but net 'pooled' scores 3 classes"):
        ev.evaluate(graph, state, data, scales=(32,), progress=False)
    (data / "zebra").mkdir()  # an empty folder stands for a class without images
    results = ev.evaluate(graph, state, data, scales=(32,), progress=False)
    assert results[0].images == 4 and results[0].classes == 3


def test_a_shape_mismatch_quotes_the_files_shapes(tmp_path, capsys):
    spec = write_spec(tmp_path, TINY, "tiny")
    data = write_images(tmp_path / "images")
    other = TINY.replace("conv3-16", "conv3-8")  # fc1 then sees 8x8x8 = 512 features, not 1024
    torch.save(archdsl.compile(archdsl.loads(other)).state_dict(), tmp_path / "w.pt")
    code = main(["eval", str(spec), "--weights", str(tmp_path / "w.pt"), "--data", str(data), "--scales", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "fc1.weight: the file has 24x512, the net needs 24x1024" in err
    assert "conv2.weight: the file has 8x8x3x3, the net needs 16x8x3x3" in err


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _broken_chunk(tmp_path) -> bytes:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    good = (tmp_path / "ok.png").read_bytes()
    at = good.index(b"IDAT") - 4
    # An IDAT length that ends inside the data: the next "chunk header" is garbage, and
    # Pillow raises SyntaxError("broken PNG file"), which once escaped as an internal error.
    return good[:at] + struct.pack(">I", 2) + good[at + 4:]


def _bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\0" * 16


@pytest.mark.parametrize("kind", ["bomb png", "bomb bmp", "broken chunk", "truncated", "not an image"])
def test_every_decoding_failure_is_a_clear_error(tmp_path, capsys, kind):
    content = {
        "bomb png": lambda: _png(20000, 20000, zlib.compress(b"\0" * 1000)),
        "bomb bmp": lambda: _bmp_claiming(30000, 30000),
        "broken chunk": lambda: _broken_chunk(tmp_path),
        "truncated": lambda: _png(64, 64)[:40],
        "not an image": lambda: b"GIF89a" + b"\xff" * 40,
    }[kind]()
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(ev.EvalError, match="cannot read image") as info:
        ev.load_image(bad)
    if kind.startswith("bomb"):
        assert "pixels" in str(info.value) or "decompression" in str(info.value).lower()
    # through the command: exit 2, no traceback
    spec = write_spec(tmp_path, POOLED, "pooled")
    data = write_images(tmp_path / "images")
    (data / "red" / "bad.png").write_bytes(content)
    torch.save(colour_classifier(), tmp_path / "w.pt")
    code = main(["eval", str(spec), "--weights", str(tmp_path / "w.pt"), "--data", str(data), "--scales", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read image" in err and "Traceback" not in err and "internal" not in err


@pytest.mark.parametrize("content, says", [
    (b"not a pickle", "text beginning 'not a pickle'"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "a PNG image"),
    (b"", "empty"),
    (b"PK\x03\x04" + b"\0" * 40, "damaged ZIP archive"),
    (bytes(range(256)) * 4, "unknown binary data"),
    (b"\x80\x02K\x05.", "weights_only=True"),  # a pickle of the number 5: read, and refused as no state dict
])
def test_a_weights_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, says):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(content)
    with pytest.raises(ev.EvalError) as info:
        ev.load_weights(junk)
    message = str(info.value)
    assert says in message or (says == "weights_only=True" and "holds int" in message), message


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(ev.EvalError, match="weights_only=True"):
        ev.load_weights(tmp_path / "evil.pt")


def test_a_corrupt_safetensors_file_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("safetensors.torch", reason="the .safetensors path needs safetensors")
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(struct.pack("<Q", 40) + b'{"w": {"dtype": "F32", "shape": [9' + b"\0" * 8)
    with pytest.raises(ev.EvalError, match="not a valid .safetensors file"):
        ev.load_weights(bad)
    spec = write_spec(tmp_path, POOLED, "pooled")
    data = write_images(tmp_path / "images")
    code = main(["eval", str(spec), "--weights", str(bad), "--data", str(data), "--scales", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "safetensors" in err and "Traceback" not in err


@pytest.mark.parametrize("args, says", [
    (["--scales", "1000000"], "at most 1024 pixels"),
    (["--scales", ",".join(["32"] * 17)], "at most 16 scales"),
    (["--grid", "1000"], "grid from 1 to 32"),
])
def test_scales_and_grid_are_bounded(tmp_path, capsys, args, says):
    spec = write_spec(tmp_path, POOLED, "pooled")
    data = write_images(tmp_path / "images")
    torch.save(colour_classifier(), tmp_path / "w.pt")
    scales = [] if args[0] == "--scales" else ["--scales", "32"]
    code = main(["eval", str(spec), "--weights", str(tmp_path / "w.pt"), "--data", str(data), "--multi-crop",
                 *scales, *args])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


def test_posteriors_are_the_same_with_or_without_a_final_softmax():
    """The protocol applies the softmax itself, after averaging: a net that ends in softmax
    and one that returns scores give the same posteriors from the same weights."""
    torch.manual_seed(3)
    with_softmax = archdsl.loads(TINY)
    without = archdsl.loads(TINY.replace("; softmax", ""))
    state = archdsl.compile(without).state_dict()
    img = Image.fromarray(torch.randint(0, 255, (40, 44, 3), dtype=torch.uint8).numpy())
    a = ev.Evaluator(with_softmax, state, methods=["dense", "multi-crop"])
    b = ev.Evaluator(without, state, methods=["dense", "multi-crop"])
    for method in ("dense", "multi_crop"):
        pa, pb = getattr(a, method)(img, [40]), getattr(b, method)(img, [40])
        torch.testing.assert_close(pa, pb)
        torch.testing.assert_close(pa.sum(), torch.tensor(1.0, dtype=torch.float64))
