"""RecBole's item token <-> internal id mapping, rebuilt from the atomic files a checkpoint was trained
on, for `seqserve import recbole` (run with the RecBole venv: scripts/ops-tools.sh recbole).

Usage: recbole_items.py CONFIG_JSON DATASET_DIR OUT_JSON
CONFIG_JSON: the checkpoint's configuration as read by read_checkpoint.py (never the pickle itself:
this script unpickles nothing). The ids are RecBole's own: create_dataset() with the options that
decide which interactions are kept and how ids are assigned, exactly as training saw them.
Writes {"items": [token of id 0 ("[PAD]"), token of id 1, ...]} or prints {"ok": false, "error"}.
"""
import json
import os
import sys

# The options Dataset reads while loading, filtering and remapping: the rest (training, evaluation,
# the model's own) cannot change which token gets which id.
DATA_OPTIONS = [
    "USER_ID_FIELD", "ITEM_ID_FIELD", "RATING_FIELD", "TIME_FIELD", "LABEL_FIELD", "threshold",
    "NEG_PREFIX", "seq_len", "field_separator", "seq_separator", "load_col", "unload_col",
    "unused_col", "additional_feat_suffix", "numerical_features", "benchmark_filename",
    "preload_weight", "normalize_field", "normalize_all", "discretization", "rm_dup_inter",
    "val_interval", "filter_inter_by_user_or_item", "user_inter_num_interval",
    "item_inter_num_interval", "alias_of_user_id", "alias_of_item_id", "alias_of_entity_id",
    "alias_of_relation_id", "repeatable", "MAX_ITEM_LIST_LENGTH", "LIST_SUFFIX",
    "ITEM_LIST_LENGTH_FIELD", "POSITION_FIELD",
]


def main():
    config_json, dataset_dir, out = sys.argv[1:4]
    cfg = json.load(open(config_json))
    name = cfg.get("dataset")
    inter = os.path.join(dataset_dir, f"{name}.inter")
    if not os.path.isfile(inter):
        print(json.dumps({"ok": False, "error": f"{inter} not found: --dataset-dir must be the "
                          f"directory of the atomic files the model was trained on ({name}.inter)"}))
        return
    import logging

    from recbole.config import Config
    from recbole.data import create_dataset

    options = {k: cfg[k] for k in DATA_OPTIONS if k in cfg}
    # Training options Config cross-checks (a CE loss wants no negative sampling): they change no id.
    options.update({"data_path": os.path.dirname(os.path.abspath(dataset_dir)),
                    "use_gpu": False, "show_progress": False,
                    "loss_type": "CE", "train_neg_sample_args": None})
    config = Config(model=cfg["model"], dataset=name, config_dict=options)
    config["data_path"] = dataset_dir  # the files' own directory, whatever its name
    logging.disable(logging.CRITICAL)  # RecBole logs the whole dataset summary otherwise
    dataset = create_dataset(config)
    tokens = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    json.dump({"items": tokens}, open(out, "w"))
    print(json.dumps({"ok": True, "n": len(tokens)}))


if __name__ == "__main__":
    main()
