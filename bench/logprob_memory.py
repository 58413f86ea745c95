"""Peak memory of one log-prob pass (forward + backward, as in the update), the plain way vs ours.

  plain  model(...).logits -> log_softmax over the vocabulary -> gather: (B, R, vocab) fp32 logits,
         their log-softmax and their gradient all exist at once
  ours   packing.response_logprobs: the LM head computes log-probs LOGPROB_CHUNK tokens at a time,
         each chunk recomputed in backward, so only (chunk, vocab) logits ever exist

Each (method, vocabulary, batch) runs in a fresh subprocess on a small Qwen2.5-VL text stack (hidden
64, 2 layers; the vocabulary is what matters) with R response tokens per sequence. On CPU the peak is
the process's resident-memory high-water mark (ru_maxrss) minus its resident memory just before the
pass; on CUDA it is torch.cuda.max_memory_allocated() minus the memory allocated before.

    python bench/logprob_memory.py                 # table, appended to BENCHMARKS.md
    python bench/logprob_memory.py --no-append --vocabs 32000 --batches 2,4
"""

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(method, vocab, batch, length, device):
    """One pass in this process; returns the peak extra memory in MiB."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    import packing

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
        tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(config).to(device)
    model.set_attn_implementation({"text_config": packing.register_shared_prompt_attention()})  # as load_model does
    prompt = 32
    ids = torch.randint(10, vocab, (batch, prompt + length), device=device)

    def plain(model):  # [prompt | response] rows, all the same length: no padding
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, prompt:, None]).squeeze(-1)

    def ours(model):  # one text-only prompt per sequence, packed by packing.collate
        encoded = [{"input_ids": row[:prompt].cpu(), "mm_token_type_ids": torch.zeros(prompt, dtype=torch.long)}
                   for row in ids]
        samples = [packing.Sample(i, row[prompt:].tolist(), []) for i, row in enumerate(ids)]
        return packing.response_logprobs(model, packing.collate(samples, encoded, 0, device), 1.0)

    run = plain if method == "plain" else ours
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    run(model).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", default="32000,151936", help="vocabulary sizes (151936 = Qwen2.5-VL)")
    parser.add_argument("--batches", default="2,4,8", help="sequences per micro-batch")
    parser.add_argument("--length", type=int, default=256, help="response tokens per sequence")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: method,vocab,batch in a fresh process
    args = parser.parse_args()
    if args.one:
        method, vocab, batch = args.one.split(",")
        print(json.dumps(measure(method, int(vocab), int(batch), args.length, args.device)))
        return

    import torch
    import packing
    rows = []
    for vocab in map(int, args.vocabs.split(",")):
        for batch in map(int, args.batches.split(",")):
            mib = {}
            for method in ("plain", "ours"):
                out = subprocess.run([sys.executable, __file__, "--one", f"{method},{vocab},{batch}",
                                      "--length", str(args.length), "--device", args.device],
                                     capture_output=True, text=True, check=True)
                mib[method] = json.loads(out.stdout.strip().splitlines()[-1])
            full_logits = batch * args.length * vocab * 4 / 2**20
            rows.append(f"| {vocab} | {batch} | {batch * args.length} | {full_logits:.0f} | {mib['plain']:.0f} | {mib['ours']:.0f} |")
            print(rows[-1], flush=True)
    command = "python bench/logprob_memory.py " + " ".join(a for a in sys.argv[1:] if a != "--no-append")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    report = "\n".join([
        f"\n## Log-prob pass peak memory ({datetime.date.today()})\n",
        f"Machine: {args.device} ({cpu if args.device == 'cpu' else torch.cuda.get_device_name()}); torch "
        f"{torch.__version__}. Command: `{command}`. Forward + backward of one micro-batch, response "
        f"length {args.length}, LM-head chunk {packing.LOGPROB_CHUNK} tokens. MiB above the memory in use before the pass.\n",
        "| vocab | sequences | response tokens | (tokens x vocab) fp32 logits, MiB | plain, MiB | ours, MiB |",
        "|---|---|---|---|---|---|", *rows, ""])
    print(report)
    if not args.no_append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
