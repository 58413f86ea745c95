"""Convert the public emotion datasets to the data.py layout: EmoSet, Emotion6, WebEmo (2/7/25) and FI
(images), DFEW and MAFW (videos, R1-Omni's in-distribution benchmarks).

Each converter reads one release as its authors distribute it and writes `OUT/<split>.jsonl` (one
row per image: `images`, `problem`, `answer`; or per clip: `videos`, `problem`, `answer`, where the one
video is a file's path or a list of its frames' paths) plus `OUT/labels.txt`, so
`data.PromptDataset(OUT / "train.jsonl", ...)`, train_grpo.py and evaluate.py find the label set by
themselves. Images and clips stay where they are (never copied): paths inside OUT are written relative,
others absolute. None of this could be run on the real downloads; the layouts come from each release's
readme, its authors' loader or download script and public code that reads it, and each converter's
docstring says what was assumed:

  emoset    EmoSet-118K: SRC/{train,val,test}.json ([emotion, image_id, image_path, annotation_path]
            entries), SRC/image/ and SRC/annotation/; Mikels 8. Writes every split the release has.
  emotion6  Emotion6: SRC/images/<emotion>/<n>.jpg and SRC/ground_truth.txt; Ekman 6. The label is the
            folder, i.e. the Flickr search keyword; --label-from ground_truth takes the annotators'
            most chosen emotion instead. No official split: all images go to test.jsonl, or a seeded
            class-stratified split with --test-fraction.
  webemo    WebEmo: SRC/train25.txt and SRC/test25.txt (`<image URL> <label id 0-24>` lines) and
            SRC/category.txt (the 25 -> 7 -> 2 hierarchy). Download the images first: they are looked
            for at IMAGE_ROOT/<split>/<label id>/<file name of the URL>, the tree the public download
            script writes (--image-root, default SRC); --skip-missing converts without dead links and
            reports how many. --level 25, 7 or 2 (required: the EMO-R3 paper's level is unknown).
  fi        FI (Flickr and Instagram): SRC/<emotion>/<image> for the Mikels 8; a seeded
            class-stratified 80/20 train/test split (--test-fraction, --seed).
  dfew      DFEW: SRC/EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv (video_name,label;
            ids 1-7) and the clips: SRC/Clip/original/<n>.mp4 (default), Clip/clip_224x224/<n>/ frame
            folders (--clips clip_224x224) or any folder of them. --fold 1-5 (required); writes the fold's
            train.jsonl and test.jsonl. Labels as R1-Omni's data has them (happy, sad, ...).
  mafw      MAFW, single-label set: SRC/Train & Test Set/single/no_caption/set_<fold>/{train,test}.txt
            (`00025.mp4 anger`) and SRC/data/clips/<n>.mp4 (default) or data/frames/<n>/ (--clips
            frames). --fold 1-5 (required). Labels as R1-Omni's data has them (angry, happy,
            contemptuous, ...; --label-names release keeps MAFW's anger, happiness, contempt, ...).
            The compound set is out of scope.
            Video rows ask R1-Omni's question followed by a line listing the labels (--no-label-list:
            the question alone; see prepare_dfew for why). --skip-missing as for webemo.

Folder-per-class releases (Emotion6, FI) are refused, with the folder named, when a class folder
holds another folder (its images would take the parent's label) or a class has no images (labels.txt
would list a class that no row has). Not here: reading, checking and batching datasets (data.py,
which this script imports; validate a result with `python data.py check OUT/train.jsonl --model
MODEL`), and the demo dataset (tiny.py). Write each dataset, each WebEmo level and each DFEW/MAFW fold
to its own OUT: one labels.txt serves every split there, and a fold's train.jsonl replaces another's.

    python prepare_data.py emoset downloads/EmoSet-118K --out data/emoset
    python prepare_data.py emotion6 downloads/Emotion6 --out data/emotion6
    python prepare_data.py webemo downloads/WebEmo --level 7 --out data/webemo7 --skip-missing
    python prepare_data.py fi downloads/FI --out data/fi --test-fraction 0.2 --seed 0
    python prepare_data.py dfew downloads/DFEW --fold 1 --out data/dfew/fold1
    python prepare_data.py mafw downloads/MAFW --fold 1 --clips frames --out data/mafw/fold1
"""

import argparse
from functools import partial
from pathlib import Path

from convert_images import prepare_emoset, prepare_emotion6, prepare_fi, prepare_webemo
from convert_video import prepare_dfew, prepare_mafw
from data import DataError


def _run(parser, args):
    """The command line's work: run one converter over the splits the flags ask for, print what it wrote."""
    src = Path(args.src)
    if (args.level is None) == (args.dataset == "webemo"):
        parser.error("--level 2, 7 or 25 is required for webemo (the paper's level is unknown) and only for webemo")
    video = args.dataset in ("dfew", "mafw")
    if (args.fold is None) == video:
        parser.error("--fold 1-5 is required for dfew and mafw (5-fold cross-validation; the fold R1-Omni trained on "
                     "is unknown) and only for them")
    for flag, owners, value in (("--hierarchy", ("webemo",), args.hierarchy),
                                ("--image-root", ("webemo",), args.image_root),
                                ("--skip-missing", ("webemo", "dfew", "mafw"), args.skip_missing),
                                ("--label-from", ("emotion6",), args.label_from),
                                ("--clips", ("dfew", "mafw"), args.clips),
                                ("--no-label-list", ("dfew", "mafw"), args.no_label_list),
                                ("--label-names", ("mafw",), args.label_names)):
        if value and args.dataset not in owners:
            names = f"{', '.join(owners[:-1])} and {owners[-1]}" if len(owners) > 1 else owners[0]
            parser.error(f"{flag} is for {names} only")
    if video and args.split not in (None, "train", "test"):
        parser.error(f"--split for {args.dataset} is train or test (each fold has these two lists), got {args.split!r}")
    if video:
        splits = ["train", "test"]
        options = dict(clips=args.clips or ("original" if args.dataset == "dfew" else "clips"),
                       skip_missing=args.skip_missing, label_list=not args.no_label_list)
        convert = partial(prepare_dfew, src, args.out, args.fold, **options) if args.dataset == "dfew" else \
            partial(prepare_mafw, src, args.out, args.fold, label_names=args.label_names or "r1-omni", **options)
    elif args.dataset == "emoset":
        splits = [s for s in ("train", "val", "test") if (src / f"{s}.json").exists()]
        convert = partial(prepare_emoset, src, args.out)
    elif args.dataset == "webemo":
        if src.is_file() and not args.split:
            parser.error(f"{src} is one list file: say which split it is with --split train or --split test")
        splits = [s for s in ("train", "test") if (src / f"{s}25.txt").exists()]
        convert = partial(prepare_webemo, src, args.out, args.level, hierarchy=args.hierarchy,
                          image_root=args.image_root, skip_missing=args.skip_missing)
    else:
        fraction = args.test_fraction if args.test_fraction is not None else (0.2 if args.dataset == "fi" else 0.0)
        splits = ["train", "test"] if fraction else ["train" if args.dataset == "fi" else "test"]
        convert = partial(prepare_fi, src, args.out, test_fraction=fraction, seed=args.seed) if args.dataset == "fi" \
            else partial(prepare_emotion6, src, args.out, test_fraction=fraction, seed=args.seed,
                         label_from=args.label_from or "folder")
    for split in [args.split] if args.split else splits or ["train"]:
        path, count = convert(split)  # one split at a time, so what a converter reports sits above its line
        print(f"wrote {count} rows to {path}")
    print(f"labels: {Path(args.out) / 'labels.txt'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["emoset", "emotion6", "webemo", "fi", "dfew", "mafw"],
                        help="which release SRC holds")
    parser.add_argument("src", help="the release's root folder (webemo: the folder of the lists, or one list)")
    parser.add_argument("--out", required=True, help="output folder (one per dataset and WebEmo level)")
    parser.add_argument("--split", default=None, help="the split to write (default: every split the release "
                                                      "has; emotion6/fi: train and test with --test-fraction)")
    parser.add_argument("--level", type=int, choices=[2, 7, 25], default=None, help="webemo label level")
    parser.add_argument("--hierarchy", default=None, help="webemo: the release's category.txt (read from SRC "
                                                          "when there) or a TSV fine<TAB>mid<TAB>coarse, row i = id i")
    parser.add_argument("--image-root", default=None, help="webemo: the downloaded tree, <split>/<label id>/<file "
                                                           "name of the URL> (default: SRC)")
    parser.add_argument("--skip-missing", action="store_true", help="webemo/dfew/mafw: convert without the images "
                                                                    "or clips that are missing and report their count")
    parser.add_argument("--fold", type=int, choices=[1, 2, 3, 4, 5], default=None,
                        help="dfew/mafw: which of the 5 cross-validation folds to write (required)")
    parser.add_argument("--clips", default=None, help="dfew: original (default), clip_224x224 or clip_224x224_16f; "
                                                      "mafw: clips (default) or frames; or the folder of the clips")
    parser.add_argument("--no-label-list", action="store_true", help="dfew/mafw: R1-Omni's question alone, without "
                                                                     "the line listing the labels")
    parser.add_argument("--label-names", choices=["r1-omni", "release"], default=None,
                        help="mafw: write labels as R1-Omni's data does (angry, happy, contemptuous, ...; default) "
                             "or as the release spells them (anger, happiness, contempt, ...)")
    parser.add_argument("--label-from", choices=["folder", "ground_truth"], default=None,
                        help="emotion6: label by folder (the search keyword; default) or by the annotators' "
                             "most chosen emotion in ground_truth.txt")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="emotion6/fi: seeded stratified test share (default: emotion6 0 = all test, fi 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="emotion6/fi: seed of the split")
    args = parser.parse_args()
    try:
        _run(parser, args)
    except DataError as e:  # a message for the person, not a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
