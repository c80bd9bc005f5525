"""RecBole itself, for the import tests and scripts/peer-recbole.sh (run with the RecBole venv of
scripts/ops-tools.sh recbole; RecBole writes log/ and log_tensorboard/ into the working directory).

  recbole_tool.py atomic LOG DATA_DIR NAME [--users N]
      writes DATA_DIR/NAME/NAME.inter from a sequence log (`user item item ...`), the timestamp being
      each event's place in its user's line (the log has order only).
  recbole_tool.py train DATA_DIR NAME OUT_DIR [--model SASRec] [--set key=json ...] [--resumable]
      trains with RecBole's Trainer and writes its checkpoint into OUT_DIR (Trainer.fit(saved=True);
      run_recbole's own reload for the test phase fails under torch>=2.6, see ../shared/NOTES.md).
      Prints {"checkpoint": path, "valid": {...}, "test": {...}} (RecBole's own metrics, computed
      with the best model after reloading the checkpoint as RecBole does).
      --resumable: after every epoch the whole training state (weights, optimizer, epoch, early-stop
      counter, best score and result, the best checkpoint's path) goes to OUT_DIR/last.pth, written
      atomically; a later run with the same arguments continues from it, so a run of many hours can
      be killed at any time and finished in several sittings. RecBole saves only its best epoch,
      which cannot resume. A resumed run draws its batches from seed + epoch, so it is not
      bit-identical to an uninterrupted one.
  recbole_tool.py score CHECKPOINT HISTORIES_JSON OUT_JSON [--dataset-dir DIR]
      RecBole's SASRec.full_sort_predict for each history of HISTORIES_JSON ({"histories": [[token,
      ...], ...]}, oldest first): {"items": [token of id 1..n], "scores": [[score of id 1..n], ...]}.
  recbole_tool.py variant CHECKPOINT WHAT OUT
      a damaged copy of a checkpoint, for the importer's error tests: WHAT = swish (hidden_act
      "swish") or extra-key (one more tensor in the state dict).

The checkpoints are this test's own files, so they are loaded with weights_only=False here; the
importer itself never does that (src/importer/read_checkpoint.py).
"""
import argparse
import json
import os
import sys


def atomic(a):
    os.makedirs(os.path.join(a.data_dir, a.name), exist_ok=True)
    path = os.path.join(a.data_dir, a.name, a.name + ".inter")
    users = 0
    with open(a.log) as src, open(path, "w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            parts = line.split()
            if len(parts) < 2:
                continue
            user, items = parts[0], parts[1:]
            for t, item in enumerate(items):
                out.write(f"{user}\t{item}\t{t}\n")
            users += 1
            if a.users and users >= a.users:
                break
    print(json.dumps({"inter": path, "users": users}))


def base_config(data_dir, name, out_dir):
    """Leave-one-out exactly as seqserve's split: per user, ordered by time, the last item is the
    test target and the one before it the validation target (RecBole's LS split)."""
    return {
        "data_path": data_dir,
        "dataset": name,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "checkpoint_dir": out_dir,
        "show_progress": False,
        "use_gpu": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
    }


def train(a):
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_logger, init_seed

    cfg = base_config(a.data_dir, a.name, a.out_dir)
    for kv in a.set or []:
        k, v = kv.split("=", 1)
        cfg[k] = json.loads(v)
    config = Config(model=a.model, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # each epoch's loss and validation metrics: stderr and ./log/
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    callback = None
    if a.resumable:
        callback = resumable(trainer, config, os.path.join(a.out_dir, "last.pth"))
    if trainer.start_epoch >= config["epochs"] or trainer.cur_step > config["stopping_step"]:
        # A resumed run that had already ended (killed during the test phase): fit would train on
        # past its early stop, or overwrite the best checkpoint with the last weights.
        valid = trainer.best_valid_result
    else:
        _, valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                               callback_fn=callback)
    # RecBole's own reload of its best checkpoint (what trainer.evaluate(load_best_model=True)
    # does, with the weights_only=False that torch>=2.6 needs for a pickle holding a Config).
    state = torch.load(trainer.saved_model_file, weights_only=False, map_location="cpu")
    model.load_state_dict(state["state_dict"])
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    print(json.dumps({
        "checkpoint": trainer.saved_model_file,
        "valid": {k: float(v) for k, v in valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        "n_items": dataset.item_num - 1,
    }))


def resumable(trainer, config, last):
    """Restores the state LAST holds (if any) into TRAINER and returns the end-of-epoch callback
    that writes it. Trainer.fit calls the callback after each validation, once its early-stopping
    bookkeeping and best checkpoint are updated."""
    import torch
    from recbole.utils import init_seed

    if os.path.exists(last):
        # Our own file, written below: weights_only=False is safe here (see the module docstring).
        state = torch.load(last, weights_only=False, map_location="cpu")
        trainer.model.load_state_dict(state["state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.start_epoch = state["epoch"] + 1
        trainer.cur_step = state["cur_step"]
        trainer.best_valid_score = state["best_valid_score"]
        trainer.best_valid_result = state["best_valid_result"]
        trainer.saved_model_file = state["best_file"]
        init_seed(config["seed"] + trainer.start_epoch, config["reproducibility"])
        print(f"resuming after epoch {state['epoch']} (best {state['best_valid_score']:.4f}, "
              f"{state['cur_step']} epochs without a better one)", file=sys.stderr)

    def save(epoch, _score):
        tmp = last + ".tmp"
        torch.save({
            "epoch": epoch,
            "cur_step": trainer.cur_step,
            "best_valid_score": trainer.best_valid_score,
            "best_valid_result": trainer.best_valid_result,
            "best_file": trainer.saved_model_file,
            "state_dict": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
        }, tmp)
        os.replace(tmp, last)

    return save


def score(a):
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model

    state = torch.load(a.checkpoint, weights_only=False, map_location="cpu")
    config = state["config"]
    if a.dataset_dir:
        config["data_path"] = a.dataset_dir
    config["device"] = torch.device("cpu")
    dataset = create_dataset(config)
    model = get_model(config["model"])(config, dataset)
    model.load_state_dict(state["state_dict"])
    model.eval()
    tokens = list(dataset.field2id_token[config["ITEM_ID_FIELD"]])
    token2id = dataset.field2token_id[config["ITEM_ID_FIELD"]]
    L = config["MAX_ITEM_LIST_LENGTH"]
    histories = json.load(open(a.histories))["histories"]
    seqs, lens = [], []
    for h in histories:
        ids = [token2id[t] for t in h][-L:]  # RecBole keeps the most recent L items
        lens.append(len(ids))
        seqs.append(ids + [0] * (L - len(ids)))  # left-aligned, padded at the end
    inter = Interaction({
        config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]: torch.tensor(seqs, dtype=torch.long),
        config["ITEM_LIST_LENGTH_FIELD"]: torch.tensor(lens, dtype=torch.long),
    })
    with torch.no_grad():
        scores = model.full_sort_predict(inter)
    # Column 0 is RecBole's padding item: not an item.
    json.dump({"items": tokens[1:], "scores": scores[:, 1:].tolist()}, open(a.out, "w"))


def variant(a):
    import torch

    state = torch.load(a.checkpoint, weights_only=False, map_location="cpu")
    if a.what == "swish":
        state["config"].final_config_dict["hidden_act"] = "swish"
    elif a.what == "extra-key":
        state["state_dict"]["trm_encoder.extra.weight"] = torch.zeros(3)
    else:
        sys.exit(f"unknown variant {a.what}")
    torch.save(state, a.out, pickle_protocol=4)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("atomic")
    s.add_argument("log")
    s.add_argument("data_dir")
    s.add_argument("name")
    s.add_argument("--users", type=int, default=0)
    s = sub.add_parser("train")
    s.add_argument("data_dir")
    s.add_argument("name")
    s.add_argument("out_dir")
    s.add_argument("--model", default="SASRec")
    s.add_argument("--set", action="append")
    s.add_argument("--resumable", action="store_true")
    s = sub.add_parser("score")
    s.add_argument("checkpoint")
    s.add_argument("histories")
    s.add_argument("out")
    s.add_argument("--dataset-dir")
    s = sub.add_parser("variant")
    s.add_argument("checkpoint")
    s.add_argument("what")
    s.add_argument("out")
    a = p.parse_args()
    {"atomic": atomic, "train": train, "score": score, "variant": variant}[a.cmd](a)


if __name__ == "__main__":
    main()
