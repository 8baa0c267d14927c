"""Training protocols over a store: the fixed split, leave-one-person-out, and the ablation."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from agestimate.calibration import calibrate
from agestimate.errors import StoreError
from agestimate.evaluation import Evaluation, labelled_faces, measure, predict_records, select_split
from agestimate.heads import AgeGenderHeads, gender_codes, update_card
from agestimate.store import EmbeddingStore, FaceRecords

from .augment import augment
from .export import save_model_dir
from .fit import FittedHeads, HeadOptions, fit_heads

logger = logging.getLogger(__name__)

# The paper's Table 3 rows, as head options.
ABLATION_VARIANTS = {
    "FC": dict(regression="fc", use_rapl=False, use_gender=False),
    "EVR": dict(use_rapl=False, use_gender=False),
    "EVR+GP": dict(use_rapl=False, use_gender=True),
    "EVR+RAPL": dict(use_rapl=True, use_gender=False),
    "EVR+RAPL+GP": dict(use_rapl=True, use_gender=True),
}


def fit_on(train: FaceRecords, val: FaceRecords, options: HeadOptions, device=None, progress=False,
           augment_with: str = "none") -> FittedHeads:
    """`fit_heads` on store records, the training part augmented with `augment_with` (see
    `training.augment`); without any gender label in `train`, the gender head is left out."""
    if options.use_gender and not (train.gender >= 0).any():
        logger.warning("no gender labels in the training faces: training without the gender head")
        options = dataclasses.replace(options, use_gender=False)
    X, age, gender = augment(train.features, train.age, train.gender, method=augment_with, seed=options.seed)
    return fit_heads(X, age, gender, val.features, val.age, val.gender, options=options, device=device, progress=progress)


def predict_with(fitted: FittedHeads, records: FaceRecords) -> Evaluation:
    """Measure a trained (torch) model on `records`."""
    outputs = fitted.predict(records.features)
    female = outputs.get("gender_prob_female")
    gender = gender_codes(np.zeros(len(records)) if female is None else female, uses_gender=female is not None)
    return measure(records, outputs["age"], gender)


def train(store, out, *, descriptor: str | None = None, options: HeadOptions = HeadOptions(), device=None,
          progress: bool = False, command: str = "", augment_with: str = "none") -> dict:
    """Train heads on the store's train split (best epoch on val), save them to `out`,
    calibrate them on val (see `agestimate.calibration`), return the card.

    The model card records the data, counts, options, descriptor, embedding model, the
    calibration and the metrics of the saved (ONNX) model on each split, intervals included.
    """
    with EmbeddingStore(store) as database:
        descriptor = descriptor or database.descriptor
        records = database.faces(labelled=True, primary=True, descriptor=descriptor)
        embedding_model = database.model_sha256
    splits = {name: select_split(records, name) for name in ("train", "val", "test")}
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise StoreError(
            f"{store}: training needs labelled faces in the train and val splits (found {len(splits['train'])} and "
            f"{len(splits['val'])}); label a split in the CSV, or use `agestimate eval --protocol lopo`"
        )
    started = time.perf_counter()
    fitted = fit_on(splits["train"], splits["val"], options, device, progress, augment_with)
    seconds = time.perf_counter() - started
    card = {
        "data": {"store": str(store), "faces_per_split": {name: len(part) for name, part in splits.items()},
                 "face": "largest face of each labelled image"},
        "descriptor": descriptor,
        "augmentation": augment_with,
        "embedding_model_sha256": embedding_model,
        "training_seconds": round(seconds, 1),
        "command": command,
    }
    save_model_dir(fitted, out, card=card)
    calibrate(out, [(store, "val")])
    heads = AgeGenderHeads.load(out)
    card["metrics"] = {name: predict_records(heads, part).metrics for name, part in splits.items() if len(part)}
    return update_card(out, metrics=card["metrics"])


def leave_one_person_out(store, *, descriptor: str | None = None, options: HeadOptions = HeadOptions(),
                         device=None, val_fraction: float = 0.1, progress: bool = False,
                         augment_with: str = "none") -> Evaluation:
    """Train on all other people, predict the one left out, for every person; metrics over all faces.

    The best epoch is chosen on a validation set of other people (`val_fraction` of them,
    drawn with the options' seed), never on the person left out.
    """
    records, _ = labelled_faces(store, descriptor)
    people = np.array(sorted(set(records.person.tolist()) - {""}))
    if len(people) < 3:
        raise StoreError(f"{store}: leave-one-person-out needs person labels for at least 3 people, found {len(people)}")
    predicted_age = np.full(len(records), np.nan, np.float32)
    predicted_gender = np.full(len(records), -1, np.int64)
    rng = np.random.default_rng(options.seed)
    for person in tqdm_if(people, progress, "lopo"):
        others = people[people != person]
        val_people = rng.choice(others, size=max(1, round(val_fraction * len(others))), replace=False)
        held_out = records.person == person
        val = np.isin(records.person, val_people)
        fitted = fit_on(records.subset(~held_out & ~val), records.subset(val), options, device, augment_with=augment_with)
        result = predict_with(fitted, records.subset(held_out))
        predicted_age[held_out] = result.predicted_age
        predicted_gender[held_out] = result.predicted_gender
    scored = records.person != ""
    return measure(records.subset(scored), predicted_age[scored], predicted_gender[scored])


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
