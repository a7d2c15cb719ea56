"""The sections of the model card that depend on what the run measured (`cxrlake.training.card`
fills its template with them): split, threshold rule and shift analysis, calibration, recipe
candidates, BatchNorm recalibration, training budget and the command that reproduces it."""

from __future__ import annotations

from cxrlake.training.config import RECIPES, JsonObject


def opt(entry: JsonObject, key: str, fmt: str = ".4f") -> str:
    value = entry.get(key)
    return "n/a" if value is None else format(value, fmt)


def shift_augmentation(aug: JsonObject) -> str:
    if not aug.get("shift_p"):
        return ""
    return (
        "- Acquisition-shift augmentation (another site, scanner or period), each transform on a\n"
        f"  random {aug['shift_p']:.0%} of the batch: gamma {aug['gamma'][0]}-{aug['gamma'][1]}, a "
        f"lower-resolution path (down to {aug['lowres'][0]}-{aug['lowres'][1]} of the size and\n"
        f"  back), Gaussian blur (sigma {aug['blur'][0]}-{aug['blur'][1]} px) or edge enhancement "
        f"(unsharp amount {aug['sharpen'][0]}-{aug['sharpen'][1]}),\n"
        f"  Gaussian noise (sigma up to {aug['noise'][1]} of the pixel range).\n"
    )


def _bar(value: float, width: int = 20) -> str:
    return "#" * int(round(value * width))


def _moves(per_shift: list[JsonObject]) -> str:
    """Which conditions move NORMAL films up and PNEUMONIA films down the most (median logit)."""
    up = sorted(
        (r for r in per_shift if r.get("normal_logit_change", 0) > 0.1),
        key=lambda r: -r["normal_logit_change"],
    )[:4]
    down = sorted(
        (r for r in per_shift if r.get("pneumonia_logit_change", 0) < -0.1),
        key=lambda r: r["pneumonia_logit_change"],
    )[:4]

    def listed(rows: list[JsonObject], key: str) -> str:
        return ", ".join(f"{r['shift']} ({r[key]:+.1f})" for r in rows) or "no condition"

    return (
        f"{listed(up, 'normal_logit_change')} move NORMAL films up, and "
        f"{listed(down, 'pneumonia_logit_change')} move PNEUMONIA films down (median change of the "
        "calibrated logit)"
    )


def _threshold_intro(summary: JsonObject, op: JsonObject) -> str:
    """The rule of the shipped threshold and why (a run of the 1.1.0 rule: that rule alone)."""
    val = summary["validation"]
    n_shifts = len(op["shifts"])
    former = next(r for r in op["rules"] if r["rule"].startswith("shift-averaged"))
    moves = _moves(op["per_shift"])
    held = summary.get("held_out_batches")
    if held is None or "threshold_rule" not in op:  # a run of the 1.1.0 rule
        return f"""## Decision threshold

Rule: the shift-averaged balanced accuracy over the {n_shifts} simulated conditions:
**{op["threshold"]:.6f}** on the calibrated probability.
"""
    target = summary["config"]["target_sensitivity"]
    return f"""## Decision threshold

Rule: **the highest threshold whose sensitivity on the held-out acquisition batches (pooled) is
>= {target}, i.e. the best specificity there at that sensitivity**. Shipped threshold:
**{op["threshold"]:.6f}** on the calibrated probability (`predicted_label = probability >=
threshold`; ONNX metadata `cxrlake.threshold`, the rule in `cxrlake.threshold_rule`). It is chosen
by `cxrlake.training.train.finalize` on the validation films alone; no test film was used.

Why this rule. The films the model will meet are later films, and the held-out batches are the
closest stand-in for them that the training folder holds: a threshold chosen there already pays
for the drift of later films instead of sitting at the edge of an in-distribution gap. Missing a
pneumonia costs more than a false alarm, hence a sensitivity floor ({target}) and the best
specificity above it. Per batch at this threshold (sensitivity, specificity) see "Held-out
acquisition batches" above. A site still sets its own point from its own labelled films with
`cxrlake calibrate` (`docs/architecture.md`); that stays the documented way.

Model 1.1.0 took its threshold from the simulated shifts (shift-averaged balanced accuracy,
{former["threshold"]:.4f} on this model): on the later films scored outside the project that rule
gave sensitivity 0.995 and specificity 0.662, i.e. the simulated shifts did not see how later
films move. They stay here as a secondary check.

### Secondary check: simulated acquisition shifts

The validation films (every third one: {summary.get("shift_films", val["n"])} films) under
{n_shifts} simulated conditions (`cxrlake.training.shift`): exposure,
gain, contrast, gamma, noise, blur, resolution path, edge enhancement, histogram equalisation,
JPEG compression and a random mix of the training ranges. {moves[:1].upper() + moves[1:]}. The
threshold rules compared
on them (thresholds on the calibrated probability; unshifted, mean and worst over the
{n_shifts} conditions):

"""


def threshold_section(summary: JsonObject) -> str:
    """## Decision threshold: the rule, the threshold rules compared under the simulated shifts,
    the shift analysis and the operating points (a run without them: the rule alone)."""
    val, op = summary["validation"], summary.get("operating_point")
    if op is None:
        return (
            "## Decision threshold\n\nRule: the highest specificity whose validation sensitivity "
            f"is >= {summary['config']['target_sensitivity']}: **{val['threshold']:.6f}**.\n"
        )
    rules = "\n".join(
        f"| {r['rule']} | {r['threshold']:.4f} | {r['unshifted_sensitivity']:.3f} "
        f"| {r['unshifted_specificity']:.3f} | {r['mean_sensitivity']:.3f} "
        f"| {r['mean_specificity']:.3f} | {r['worst_sensitivity']:.3f} "
        f"| {r['worst_specificity']:.3f} |"
        for r in op["rules"]
    )
    loso = "\n".join(
        f"| {r['shift']} | {r['threshold']:.4f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} |"
        for r in op["leave_one_shift_out"]
    )
    per_shift = "\n".join(
        f"| {r['shift']} | {r['auc']:.4f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} "
        f"| {r['accuracy']:.3f} | {r['ece']:.3f} |"
        for r in op["per_shift"]
    )
    points = "\n".join(
        f"| {p['target_sensitivity']:.2f} | {p['threshold']:.4f} | {p['sensitivity']:.4f} "
        f"| {p['specificity']:.4f} | {opt(p, 'shifted_mean_sensitivity', '.4f')} "
        f"| {opt(p, 'shifted_mean_specificity', '.4f')} |"
        for p in summary.get("operating_points", [])
    )
    return (
        _threshold_intro(summary, op)
        + f"""| rule | threshold | sens. unshifted | spec. unshifted | sens. shift-mean \
| spec. shift-mean | sens. worst shift | spec. worst shift |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{rules}

The worst-shift rules are hostage to the single harshest condition (they move the threshold to
one end for one condition); the shift-averaged rule moves it only as far as the conditions agree.
The rule itself is checked for over-fitting to the simulated conditions: chosen without one
condition, then evaluated on that condition (a site the rule never saw):

| left-out condition | threshold | sensitivity | specificity |
| --- | ---: | ---: | ---: |
{loso}

### Acquisition shift analysis (shipped file, shipped threshold)

| condition | AUC | sensitivity | specificity | accuracy | ECE |
| --- | ---: | ---: | ---: | ---: | ---: |
{per_shift}

Shift-mean AUC {op["mean_auc"]:.4f}, worst {op["worst_auc"]:.4f}.

### Operating points

Thresholds for a target sensitivity on unshifted validation, with what they give under shift
(a site choosing one of them should confirm it with `cxrlake calibrate` on its own films):

| target sensitivity | threshold | sensitivity | specificity | shift-mean sens. \
| shift-mean spec. |
| ---: | ---: | ---: | ---: | ---: | ---: |
{points}
"""
    )


def calibration_section(summary: JsonObject, unshifted_rows: str) -> str:
    op = summary.get("operating_point")
    if op is None:
        return (
            "Calibration (validation, 10 equal-width bins):\n\n"
            "| P(PNEUMONIA) bin | images | mean predicted | observed PNEUMONIA rate |\n"
            f"| --- | ---: | ---: | ---: |\n{unshifted_rows}\n"
        )
    before, after = op["calibration"]["before"], op["calibration"]["after"]
    bins = "\n".join(
        f"| {b['lower']:.1f}-{b['upper']:.1f} | {b['count']} | {b['mean_probability']:.3f} "
        f"| {b['observed_rate']:.3f} | `{_bar(b['mean_probability']):<20}` "
        f"| `{_bar(b['observed_rate']):<20}` |"
        for b in after["shifted_bins"]
    )
    n_shifts = len(op["shifts"])
    val = summary["validation"]
    prevalence = val["n_pneumonia"] / val["n"]
    return f"""## Calibration

Temperature scaling: `probability = sigmoid(logit / T)` with **T = {op["temperature"]:.3f}**,
fitted by maximum likelihood on the validation films pooled over the {n_shifts} acquisition
conditions, and folded into the head of the shipped file (metadata `cxrlake.temperature`). One
parameter: the ranking, the AUC and the heatmap's shape are unchanged. Isotonic regression was not
used: it is a step function, so it would bring back the ties a float head removes. Expected
calibration error (10 equal-width bins) and Brier score:

| | ECE unshifted | Brier unshifted | ECE shifted (pooled) | Brier shifted (pooled) |
| --- | ---: | ---: | ---: | ---: |
| before (T = 1) | {before["unshifted_ece"]:.4f} | {before["unshifted_brier"]:.4f} \
| {before["shifted_ece"]:.4f} | {before["shifted_brier"]:.4f} |
| after (T = {op["temperature"]:.3f}) | {after["unshifted_ece"]:.4f} \
| {after["unshifted_brier"]:.4f} | {after["shifted_ece"]:.4f} | {after["shifted_brier"]:.4f} |

Reliability diagram (calibrated, validation pooled over the conditions; a calibrated model has the
two bars of a row equal). Probabilities are calibrated for this validation's prevalence
({prevalence:.0%} PNEUMONIA); at a site with another prevalence the same film has other odds, and
one temperature cannot bend the curve where the middle bins (few films) stray from the diagonal:
treat a probability as a ranking score plus a rough likelihood, and the site's threshold as the
decision.

| P(PNEUMONIA) bin | films | mean predicted | observed PNEUMONIA rate | predicted | observed |
| --- | ---: | ---: | ---: | --- | --- |
{bins}

Unshifted validation, calibrated (10 equal-width bins):

| P(PNEUMONIA) bin | images | mean predicted | observed PNEUMONIA rate |
| --- | ---: | ---: | ---: |
{unshifted_rows}
"""


def candidates_section(summary: JsonObject) -> str:
    price = summary.get("price")
    if not price:
        return ""
    speed_only = "".join(
        f" {c['name']}: {c['images_per_second']:.0f} img/s, {c['distinct_fullres']} distinct "
        "probabilities."
        for c in price.get("speed_only", [])
    )
    rows = "\n".join(
        f"| {c['name']} | {c['shifted_mean_auc']:.4f} | {c['shifted_worst_auc']:.4f} "
        f"| {c['outside_augmentation_auc']:.4f} "
        f"| {c['unshifted_auc']:.4f} | {c['images_per_second']:.0f} "
        f"| {c['size_mb']:.1f} MB | {c['note']} |"
        for c in price["candidates"]
    )
    return f"""## Candidates: ranking under shift against speed and size

Each candidate scored on the same shifted validation ({price["conditions"]} conditions x
{price["films"]} films; AUC needs no threshold). Speed: `cxrlake.predict` end to end (decode,
resize, inference) on the 200 full-resolution films of `chest_xray_fullres`, 2 cores, one run
(`{price["command"]}`); a test-time augmentation or an ensemble of k passes costs k times the
inference. A model trained with the acquisition-shift augmentation has seen conditions of the
same kinds as most of the shifted validation; the column "kinds outside the augmentation" averages
the conditions it never saw a kind of (gain, histogram equalisation, JPEG compression). Shipped:
**{price["shipped"]}**.

| candidate | shift-mean AUC | worst-shift AUC | AUC, kinds outside the augmentation \
| unshifted AUC | img/s | size | note |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
{rows}

Distinct probabilities among the {price["fullres_images"]} full-resolution films: \
{price["distinct_fullres"]}.{speed_only}

{price.get("conclusion", "")}

"""


def split_section(summary: JsonObject) -> str:
    cfg, split = summary["config"], summary["split"]
    table = f"""| | images | PNEUMONIA | NORMAL | patients |
| --- | ---: | ---: | ---: | ---: |
| train | {split["train_images"]} | {split["train_pneumonia"]} \
| {split["train_images"] - split["train_pneumonia"]} | {split["train_patients"]} |
| validation | {split["validation_images"]} | {split["validation_pneumonia"]} \
| {split["validation_images"] - split["validation_pneumonia"]} | {split["validation_patients"]} |
"""
    if cfg.get("split", "patients") != "acquisition":
        return f"""Patient-grouped, stratified, seeded (`seed = {cfg["seed"]}`, `val_fraction = \
{cfg["val_fraction"]}`): no patient and no duplicate is on both sides.

{table}"""
    held = summary["held_out_batches"]
    n, k = cfg["n_batches"], cfg["held_out_batches"]
    rows = []
    described = {d["batch"]: d for d in summary.get("acquisition_batches", [])}
    for b in held["batches"]:
        d = described.get(b["batch"], {})
        normal, pneu = d.get("NORMAL", {}), d.get("PNEUMONIA", {})
        rows.append(
            f"| {b['batch'] + 1} of {n} | {normal.get('first')} .. {normal.get('last')} "
            f"| {pneu.get('first')} .. {pneu.get('last')} | {b['images']} | {b['pneumonia']} "
            f"| {opt(b, 'auc')} | {opt(b, 'sensitivity', '.3f')} "
            f"| {opt(b, 'specificity', '.3f')} |"
        )
    batch_rows = "\n".join(rows)
    return f"""**Acquisition batches held out** (`cxrlake.training.data.acquisition_split`, \
from 1.2.0;
no seed: the split is fixed by the file names). The file names carry the order in which the
films were acquired: NORMAL films come in two naming schemes, `IM-NNNN-MMMM` and then
`NORMAL2-IM-NNNN-MMMM`, each numbered upwards; PNEUMONIA films are `personN_bacteria_K` /
`personN_virus_K`, where the image number K rises with the patient number N (no inversion among
the 3,875 films). Per class, the patient groups (patient from the name, merged with files of
identical bytes, so no patient and no duplicate is on both sides) are put in that order, cut
into {n} batches of about equal size, and the **latest {k} batches are the validation**: the
newest NORMAL2 films and the highest patient numbers. Every batch holds both classes, so each has
its own AUC, sensitivity and specificity.

Why this resembles a later acquisition: a later acquisition is a new run of the same scanners
and staff on new patients, with whatever drifted in between (exposure habits, positioning,
processing, the case mix of a season). The held-out batches are exactly such a run: new patients,
contiguous in time, with none of their neighbours in training, where the random patient split of
1.1.0 put films from every period on both sides and scored AUC 0.9990 while the later films scored
0.9544. A batch split cannot show changes that happened only after the training folder ends; the
official test films are scored outside the project.

{table}
Held-out batches (first .. last film per class in acquisition order; figures of the shipped
file at the shipped threshold):

| batch | NORMAL films | PNEUMONIA films | images | PNEUMONIA | AUC | sensitivity \
| specificity |
| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |
{batch_rows}

Mean AUC over the held-out batches **{held["mean_auc"]:.4f}**, worst batch \
**{held["worst_auc"]:.4f}**
(batch {held["worst_batch"] + 1}).
"""


def recipes_section(summary: JsonObject) -> str:
    rows = summary.get("recipe_candidates") or []
    if not rows:
        return ""
    shipped = summary["config"].get("recipe")
    steps = {r["steps"] for r in rows}
    body = []
    for r in sorted(rows, key=lambda r: -(r["batch_mean_auc"] or 0.0)):
        per = " / ".join(opt(b, "auc") for b in r["batches"])
        mark = " **(shipped)**" if r["recipe"] == shipped else ""
        pooled = r["pooled"]
        body.append(
            f"| {r['recipe']}{mark} | {r['config']['size']} | {r['steps']} "
            f"| {r['batch_mean_auc']:.4f} | {r['batch_worst_auc']:.4f} | {per} "
            f"| {pooled['sensitivity']:.3f} | {pooled['specificity']:.3f} "
            f"| {r['shifted_mean_auc']:.4f} | {r['train_seconds'] / 60:.0f} |"
        )
    table = "\n".join(body)
    return f"""## Recipe candidates on the held-out acquisition batches

Every candidate trained with the same seed, split and step budget \
({", ".join(map(str, sorted(steps)))}
optimizer steps of {rows[0]["config"]["batch_size"]} films; "longer" gets twice the budget, which is
its point), scored in torch on the held-out batches at the end of the budget (before the
BatchNorm recalibration step of the shipped file, see above). "train min" is wall clock on 2
cores shared with other agents (load average 1 to 20), not a cost comparison.
Ranked by the mean AUC over the held-out batches (the worst batch next to it). Sensitivity and
specificity: pooled held-out batches at each candidate's own threshold for sensitivity >=
{summary["config"]["target_sensitivity"]}. Shift AUC: mean over gain 1.25, equalised histogram and
JPEG q30 on every twelfth validation film (simulated conditions of kinds no augmentation produces;
secondary). Each row is reproducible with `cxrlake train --recipe NAME` (recipes in
`cxrlake.training.config.RECIPES`; figures in `docs/model_candidates/`).

| recipe | px | steps | AUC mean over batches | worst batch AUC | AUC per batch \
| sensitivity | specificity | shift AUC | train min |
| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |
{table}

Recipes: 1.0.0 = geometry and exposure augmentation only; 1.1.0 = + simulated acquisition shifts
(gamma, resolution path, blur or edge enhancement, noise); 224px = 1.1.0 at 224 px; longer = twice
the steps; label-smoothing = BCE targets 0.05 / 0.95 (a loss that stops pushing logits to
infinity once a film is classified, the direct brake on over-confidence); mixup = pairs of films
and their labels blended with a Beta(0.4, 0.4) weight (trains the model to give intermediate
scores between classes instead of a cliff that new films fall off); a "1.0.0+" prefix puts the
regulariser on the 1.0.0 augmentation.

"""


def bn_section(summary: JsonObject) -> str:
    bn = summary["bn_recalibration"]
    before, after = bn["validation_before"], bn["validation_after"]
    if bn.get("kept", True):
        return (
            "- After training the BatchNorm running statistics of the trainable layers are "
            f'recomputed over\n  {bn["images"]} training images ("precise BN"): the '
            "TF-converted backbone uses momentum 0.01,\n  so the running statistics trail the "
            f"weights. Validation before/after: AUC {before['auc']:.4f} ->\n  "
            f"{after['auc']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}.\n"
        )
    return (
        '- BatchNorm recalibration ("precise BN": the running statistics of the trainable '
        f"layers recomputed over\n  {bn['images']} training images) was tried and **not kept**: "
        "it lowered the mean AUC over the held-out\n  batches from "
        f"{before['batch_mean_auc']:.4f} to {bn['recalibrated_batch_mean_auc']:.4f} (the exact "
        "average over training films suits\n  the later films less than the statistics the "
        "training run itself kept); the shipped file has the\n  trained statistics "
        f"(pooled validation AUC {before['auc']:.4f} in torch, {after['auc']:.4f} as fp32 ONNX).\n"
    )


def regularisers(cfg: JsonObject) -> str:
    parts = []
    if cfg.get("label_smoothing"):
        e = cfg["label_smoothing"]
        parts.append(f"- Label smoothing: BCE targets {e / 2:g} / {1 - e / 2:g}.\n")
    if cfg.get("mixup_alpha"):
        parts.append(
            f"- Mixup: films and labels blended pairwise with a Beta({cfg['mixup_alpha']}, "
            f"{cfg['mixup_alpha']}) weight.\n"
        )
    return "".join(parts)


def budget(cfg: JsonObject, history: list[JsonObject]) -> str:
    recipe = f"recipe `{cfg['recipe']}`, " if cfg.get("recipe") else ""
    if cfg.get("steps"):
        selected = max(history, key=lambda h: h.get("batch_mean_auc") or h["auc"])
        return (
            f"{recipe}{cfg['steps']} optimizer steps (weights of step {selected.get('step')} "
            "kept by model selection)"
        )
    return f"{recipe}{cfg['epochs']} epochs"


def train_command(cfg: JsonObject) -> str:
    if cfg.get("recipe"):
        return (
            f".venv/bin/cxrlake train --data ../shared/data/chest_xray/train --recipe "
            f"{cfg['recipe']} --steps {cfg['steps'] // _factor(cfg['recipe'])} \\\n"
            f"    --threads {cfg['threads']} --seed {cfg['seed']} --model-version "
            f"{cfg['model_version']} \\\n"
            "    --out python/cxrlake/models --card MODEL_CARD.md --run-dir train_runs/<name>"
        )
    return (
        f".venv/bin/cxrlake train --data ../shared/data/chest_xray/train --size {cfg['size']} "
        f"--epochs {cfg['epochs']} \\\n    --threads {cfg['threads']} --seed {cfg['seed']} \\\n"
        "    --out python/cxrlake/models --card MODEL_CARD.md --run-dir train_runs/<name>"
    )


def _factor(recipe: str) -> int:
    return RECIPES.get(recipe, {}).get("budget_factor", 1)
