"""Object vocabularies (PASCAL VOC 20, COCO 80) with the synonyms and plurals captions use."""
from __future__ import annotations

from .errors import ConfigError

VOC20: dict[str, list[str]] = {
    "aeroplane": ["aeroplane", "airplane", "plane", "jet", "airliner", "aircraft"],
    "bicycle": ["bicycle", "bike"],
    "bird": ["bird", "seagull", "gull", "pigeon", "duck", "goose", "parrot", "owl"],
    "boat": ["boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry"],
    "bottle": ["bottle"],
    "bus": ["bus"],
    "car": ["car", "taxi", "suv"],
    "cat": ["cat", "kitten", "kitty"],
    "chair": ["chair"],
    "cow": ["cow", "cattle", "bull", "calf"],
    "diningtable": ["dining table", "table"],
    "dog": ["dog", "puppy"],
    "horse": ["horse", "pony"],
    "motorbike": ["motorbike", "motorcycle", "moped"],
    "person": ["person", "people", "man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "player",
               "skier", "surfer", "skateboarder", "rider", "baby", "adult", "worker", "crowd"],
    "pottedplant": ["potted plant", "houseplant", "plant"],
    "sheep": ["sheep", "lamb"],
    "sofa": ["sofa", "couch"],
    "train": ["train", "locomotive"],
    "tvmonitor": ["tv", "television", "monitor", "tv monitor"],
}

_COCO_SYNONYMS = {
    "person": VOC20["person"], "bicycle": ["bicycle", "bike"], "car": ["car", "taxi", "suv"],
    "motorcycle": ["motorcycle", "motorbike", "moped"], "airplane": ["airplane", "aeroplane", "plane", "jet", "airliner"],
    "boat": VOC20["boat"], "dining table": ["dining table", "table"], "couch": ["couch", "sofa"],
    "tv": ["tv", "television"], "cell phone": ["cell phone", "cellphone", "phone", "smartphone"],
    "potted plant": ["potted plant", "houseplant", "plant"], "donut": ["donut", "doughnut"],
    "laptop": ["laptop", "computer"], "hair drier": ["hair drier", "hair dryer", "hairdryer"],
    "sports ball": ["sports ball", "ball", "soccer ball", "football", "baseball", "basketball", "tennis ball"],
    "baseball bat": ["baseball bat", "bat"], "baseball glove": ["baseball glove", "glove", "mitt"],
    "wine glass": ["wine glass", "glass"], "hot dog": ["hot dog", "hotdog"], "bird": VOC20["bird"],
    "cow": VOC20["cow"], "dog": VOC20["dog"], "cat": VOC20["cat"], "horse": VOC20["horse"], "sheep": VOC20["sheep"],
    "teddy bear": ["teddy bear", "teddy"], "skis": ["skis", "ski"], "bus": ["bus"], "train": ["train", "locomotive"],
}
COCO80_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
COCO80: dict[str, list[str]] = {c: _COCO_SYNONYMS.get(c, [c]) for c in COCO80_NAMES}
COCO80["tennis racket"] = ["tennis racket", "racket", "racquet"]
COCO80["refrigerator"] = ["refrigerator", "fridge"]
COCO80["remote"] = ["remote", "remote control"]

VOCABULARIES = {"voc": VOC20, "coco": COCO80}

_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
              "knife": "knives", "sheep": "sheep", "skis": "skis", "people": "people", "cattle": "cattle",
              "bus": "buses", "goose": "geese", "crowd": "crowds", "calf": "calves", "shelf": "shelves"}


def plural(word: str) -> str:
    """English plural of the last word of a term ("dining table" -> "dining tables")."""
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


def expand(vocab: dict[str, list[str]]) -> dict[str, str]:
    """term -> class, with every synonym and its plural (lower case)."""
    terms: dict[str, str] = {}
    for cls, words in vocab.items():
        for w in [cls, *words]:
            for t in (w.lower(), plural(w.lower())):
                terms.setdefault(t, cls)
    return terms


def resolve_vocabulary(spec: str | list[str] | dict[str, list[str]]) -> dict[str, list[str]]:
    """'voc', 'coco', a comma-separated list, a list of names, or a {class: synonyms} dict."""
    if isinstance(spec, dict):
        return {k: list(v) for k, v in spec.items()}
    if isinstance(spec, str) and spec.lower() in VOCABULARIES:
        return VOCABULARIES[spec.lower()]
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError("the vocabulary is empty")
    known = {**COCO80, **VOC20}
    return {n: known.get(n, [n]) for n in names}
