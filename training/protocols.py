"""Training protocols over stores: the fixed split (with people of unsplit stores added),
person-grouped folds and leave-one-person-out, and the ablation."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from agestimate.errors import StoreError
from agestimate.evaluation.calibrate import calibrate
from agestimate.evaluation.folds import deal_into_folds
from agestimate.evaluation.measure import Evaluation, labelled_faces, measure, predict_records, select_split
from agestimate.heads.model import AgeGenderHeads, gender_codes, update_card
from agestimate.store.store import FaceRecords

from .augment import augment
from .export import save_model_dir
from .fit import FittedHeads, HeadOptions, fit_heads
from .sources import (
    LabelledSources,
    assign_splits,
    held_out_groups,
    label_quality_exclusions,
    load_sources,
    repeat_index,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# The paper's Table 3 rows, as head options.
ABLATION_VARIANTS = {
    "FC": dict(regression="fc", use_rapl=False, use_gender=False),
    "EVR": dict(use_rapl=False, use_gender=False),
    "EVR+GP": dict(use_rapl=False, use_gender=True),
    "EVR+RAPL": dict(use_rapl=True, use_gender=False),
    "EVR+RAPL+GP": dict(use_rapl=True, use_gender=True),
}


def fit_on(train: FaceRecords, val: FaceRecords | None, options: HeadOptions, device=None, progress=False,
           augment_with: str = "none") -> FittedHeads:
    """`fit_heads` on store records, the training part augmented with `augment_with` (see
    `training.augment`); without any gender label in `train`, the gender head is left out.
    `val=None` trains for ``options.epochs`` and keeps the last epoch."""
    if options.use_gender and not (train.gender >= 0).any():
        logger.warning("no gender labels in the training faces: training without the gender head")
        options = dataclasses.replace(options, use_gender=False)
    X, age, gender = augment(train.features, train.age, train.gender, method=augment_with, seed=options.seed)
    validation = (None, None, None) if val is None else (val.features, val.age, val.gender)
    return fit_heads(X, age, gender, *validation, options=options, device=device, progress=progress)


def predict_with(fitted: FittedHeads, records: FaceRecords) -> Evaluation:
    """Measure a trained (torch) model on `records`."""
    outputs = fitted.predict(records.features)
    female = outputs.get("prob_female")
    gender = gender_codes(np.zeros(len(records)) if female is None else female, uses_gender=female is not None)
    return measure(records, outputs["age"], gender)


def metrics_by_source(fitted: FittedHeads, sources: LabelledSources, split: np.ndarray, splits=SPLITS) -> dict:
    """``{store: {split: metrics}}`` of a trained model, for the non-empty parts."""
    result = {}
    for store in sources.stores:
        parts = {name: (sources.source == store) & (split == name) for name in splits}
        result[store] = {name: predict_with(fitted, sources.records.subset(mask)).metrics
                         for name, mask in parts.items() if mask.any()}
    return result


def train(store, out, *, descriptor: str | None = None, options: HeadOptions = HeadOptions(), device=None,
          progress: bool = False, command: str = "", augment_with: str = "none", val_fraction: float = 0.1,
          refit: bool = False, exclude_label_outliers: bool = False,
          exclude_near_duplicates: float | None = None, repeats=None) -> dict:
    """Train heads on the train part of one store or several (best epoch on the val part), save
    them to `out`, return the model card.

    Faces keep their split label; faces without one (a store with no splits, like FG-NET) train,
    but for `val_fraction` of their people (or images, where no person is known), which join
    the validation set that chooses the epoch (see `training.sources`). With `refit`, the heads
    are then trained again from the start, for the chosen number of epochs, with those people
    added to the training faces: every person of such a store is learnt from, the fixed val
    split stays held out. `exclude_label_outliers` and `exclude_near_duplicates` (a cosine
    threshold) leave training faces out (see `training.sources.label_quality_exclusions`).
    `repeats` (one count per store) shows each training face of a store that many times per
    epoch (`training.sources.repeat_index`).

    The model card records the data (stores, faces per split and per store, faces left out),
    the options, descriptor, embedding model and the metrics per split, and per store and
    split when there are several stores; with `refit`, how the epoch was chosen.
    """
    sources = load_sources(store, descriptor)
    split = assign_splits(sources, val_fraction=val_fraction, seed=options.seed)
    excluded = label_quality_exclusions(sources, split, label_outliers=exclude_label_outliers,
                                        near_duplicates=exclude_near_duplicates)
    for mask in excluded.values():
        split[mask] = "excluded"
    records = sources.records.replace(split=split)
    parts = {name: records.subset(split == name) for name in SPLITS}
    if len(parts["train"]) == 0 or len(parts["val"]) == 0:
        raise StoreError(
            f"{', '.join(sources.stores)}: training needs labelled faces in the train and val parts (found "
            f"{len(parts['train'])} and {len(parts['val'])}); label a split in the CSV, give --val-fraction above 0, "
            "or use `agestimate eval --protocol lopo`"
        )
    started = time.perf_counter()
    fitted = fit_on(records.subset(repeat_index(sources, split == "train", repeats)), parts["val"], options, device,
                    progress, augment_with)
    epoch_choice = None
    held_people = (sources.records.split == "") & (split == "val")
    if refit and held_people.any():
        epoch_choice = {
            "best_epoch": fitted.best_epoch,
            "val_faces_per_source": {store: n["val"] for store, n in sources.counts(split).items() if "val" in n},
            "val_metrics_by_source": {store: metrics["val"]
                                      for store, metrics in metrics_by_source(fitted, sources, split, ("val",)).items() if metrics},
            "then": "trained again from the start for best_epoch epochs, the held-out people added to the training faces",
        }
        split[held_people] = "train"
        records = records.replace(split=split)
        parts = {name: records.subset(split == name) for name in SPLITS}
        fitted = fit_on(records.subset(repeat_index(sources, split == "train", repeats)), None,
                        dataclasses.replace(options, epochs=fitted.best_epoch), device, progress, augment_with)
    seconds = time.perf_counter() - started
    card = {
        "data": {"stores": sources.stores, "faces_per_split": {name: len(part) for name, part in parts.items()},
                 "faces_per_source": sources.counts(split), "val_fraction": val_fraction,
                 "excluded_training_faces": {reason: int(mask.sum()) for reason, mask in excluded.items()},
                 "face": "largest face of each labelled image"},
        "descriptor": sources.descriptor,
        "augmentation": augment_with,
        "embedding_model_sha256": sources.embedding_model,
        "training_seconds": round(seconds, 1),
        "command": command,
    }
    if len(sources.stores) > 1:
        card["metrics_by_source"] = metrics_by_source(fitted, sources, split)
    if epoch_choice is not None:
        card["epoch_choice"] = epoch_choice
    if exclude_near_duplicates is not None:
        card["data"]["near_duplicate_threshold"] = exclude_near_duplicates
    if repeats is not None:
        card["data"]["repeats_per_epoch"] = dict(zip(sources.stores, map(int, repeats)))
    save_model_dir(fitted, out, card=card)
    calibrate(out, [(store, "val") for store in sources.stores
                    if (sources.records.split[sources.source == store] == "val").any()])
    heads = AgeGenderHeads.load(out)
    card["metrics"] = {name: predict_records(heads, part).metrics for name, part in parts.items() if len(part)}
    return update_card(out, metrics=card["metrics"])


def person_folds(stores, *, folds: int | None = 5, descriptor: str | None = None, options: HeadOptions = HeadOptions(),
                 device=None, val_fraction: float = 0.1, progress: bool = False, augment_with: str = "none",
                 repeats=None, shuffles: int = 1) -> Evaluation:
    """Person-grouped cross-validation: every face with a person label and no split label
    (FG-NET's; where no such face exists, every face with a person label) is predicted by heads
    that never saw that person; metrics over all those faces.

    These people (see `training.sources`) are shuffled with the options' seed and dealt into
    `folds` folds (None: one per person, leave-one-person-out). For each fold, the heads train
    on the other folds' people, except `val_fraction` of them held out to choose the epoch, and
    on the other faces of the train split or of no split (UTKFace's, AAF's and LFW's train
    splits: LFW's people keep their split); the other faces of the val split join the
    validation set, those of the test split are never used. `repeats`: as in `train`.

    `shuffles` > 1 repeats it all with the seeds seed, seed + 1, ... (other folds, other heads):
    each face is then predicted once per shuffle, the metrics are over all these predictions
    (``n`` counts them; MAE and biases are the means over shuffles) and ``mae_per_shuffle``
    lists each shuffle's MAE. One shuffle of a few dozen people is a noisy measure (FG-NET:
    BENCHMARKS.md, issue 18).
    """
    if shuffles < 1:
        raise ValueError(f"shuffles must be at least 1, got {shuffles}")
    sources = load_sources(stores, descriptor)
    records, groups = sources.records, sources.groups
    has_person = records.person != ""
    if (has_person & (records.split == "")).any():  # people of a store without splits: those are dealt, LFW's keep their split
        has_person &= records.split == ""
    people = np.array(sorted(set(groups[has_person].tolist())), dtype=object)
    if len(people) < 3:
        raise StoreError(f"{', '.join(sources.stores)}: person folds need person labels for at least 3 people, "
                         f"found {len(people)}")
    n_folds = len(people) if folds is None else folds
    if not 2 <= n_folds <= len(people):
        raise StoreError(f"{', '.join(sources.stores)}: {n_folds} folds of {len(people)} people; give 2 to {len(people)}")
    fixed_val = ~has_person & (records.split == "val")
    free = ~has_person & ~np.isin(records.split, ("val", "test"))
    results = []
    for shuffle in range(shuffles):
        shuffle_options = dataclasses.replace(options, seed=options.seed + shuffle)
        rng = np.random.default_rng(shuffle_options.seed)
        predicted_age = np.full(len(records), np.nan, np.float32)
        predicted_gender = np.full(len(records), -1, np.int64)
        for fold in tqdm_if(deal_into_folds(people, n_folds, rng), progress, "lopo" if folds is None else "folds"):
            held_out = np.isin(groups, fold)
            val_people = held_out_groups(groups, has_person & ~held_out, fraction=val_fraction, rng=rng)
            training = repeat_index(sources, (has_person & ~held_out & ~val_people) | free, repeats)
            fitted = fit_on(records.subset(training), records.subset(val_people | fixed_val), shuffle_options, device,
                            augment_with=augment_with)
            fold_result = predict_with(fitted, records.subset(held_out))
            predicted_age[held_out] = fold_result.predicted_age
            predicted_gender[held_out] = fold_result.predicted_gender
        results.append(measure(records.subset(has_person), predicted_age[has_person], predicted_gender[has_person]))
    if shuffles == 1:
        return results[0]
    pooled = measure(FaceRecords.concatenate([result.records for result in results]),
                     np.concatenate([result.predicted_age for result in results]),
                     np.concatenate([result.predicted_gender for result in results]))
    pooled.metrics.update({"shuffles": shuffles, "mae_per_shuffle": [result.metrics["mae"] for result in results]})
    return pooled


def ablation(store, *, descriptor: str | None = None, seeds=(0, 1, 2), options: HeadOptions = HeadOptions(),
             device=None, progress: bool = False) -> list[dict]:
    """The paper's Table 3 on this store: each variant trained with each seed, measured on test.

    Returns one row per variant: mean and standard deviation over seeds of MAE, CS@5 and gender
    accuracy (None for variants without a gender head), and the training seconds.
    """
    records, _ = labelled_faces(store, descriptor)
    train_part, val_part, test_part = (select_split(records, name) for name in ("train", "val", "test"))
    empty = [name for name, part in (("train", train_part), ("val", val_part), ("test", test_part)) if len(part) == 0]
    if empty:
        raise StoreError(f"{store}: the ablation needs labelled faces in the train, val and test splits; none in {empty}")
    rows = []
    for name, changes in ABLATION_VARIANTS.items():
        runs = []
        for seed in tqdm_if(seeds, progress, name):
            started = time.perf_counter()
            fitted = fit_on(train_part, val_part, dataclasses.replace(options, seed=seed, **changes), device)
            metrics = predict_with(fitted, test_part).metrics
            runs.append({**metrics, "seconds": time.perf_counter() - started})
            logger.info("%s seed %d: test MAE %.3f", name, seed, metrics["mae"])
        row = {"variant": name, "seeds": len(seeds)}
        for key in ("mae", "cs5", "gender_accuracy", "mae_60plus", "seconds"):
            values = [run[key] for run in runs if run[key] is not None]
            gender_head = changes.get("use_gender", True)
            usable = values and (key != "gender_accuracy" or gender_head)
            row[key] = float(np.mean(values)) if usable else None
            row[f"{key}_std"] = float(np.std(values)) if usable else None
        rows.append(row)
    return rows


def tqdm_if(items, progress: bool, description: str):
    from tqdm import tqdm

    return tqdm(items, desc=description, disable=not progress, dynamic_ncols=True)
