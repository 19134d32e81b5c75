"""Ask a fine-tuned model the questions of a C3-derived SFT file with the chat template and score its replies.

    python scripts/sft_c3_check.py --model_dir out/model --tokenizer_path ../shared/data/pangu_tokenizer \\
        --input c3_dev.jsonl [--limit 200] [--show 5]

Each record's system and user turns are the prompt (with the generation prompt); generation is greedy and
stops at the turn end. Reported: replies that end at the turn end, replies that are one of the choices, and
replies equal to the answer (compared after the tokenizer's own round trip, which normalises the text).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

CHOICE_LINE = re.compile(r"^[A-H]\. (.*)$", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--tokenizer_path", required=True)
    parser.add_argument("--input", required=True, help="JSON lines written by scripts/make_c3_sft.py")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--show", type=int, default=5, help="print this many question/reply pairs")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    args = parser.parse_args(argv)

    from pangu_zoo.data.sft.chat_template import encode_chat
    from pangu_zoo.data.sft.markers import MarkerEncoder, markers_for
    from pangu_zoo.models import from_pretrained
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for
    from pangu_zoo.tokenizers.special import output_text

    model = from_pretrained(args.model_dir, dropout_rate=0.0)
    tokenizer = load_tokenizer(tokenizer_kind_for(model.config), args.tokenizer_path)
    markers = markers_for(tokenizer)
    turn_end = MarkerEncoder(tokenizer, markers).turn_end_id
    room = model.config.max_position_embeddings - args.max_new_tokens + 1

    def normal(text: str) -> str:  # what the tokenizer gives back for a text (PanGu-alpha normalises it)
        return output_text(tokenizer, tokenizer.encode(text)).strip()

    ended = in_choices = correct = asked = 0
    with open(args.input, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            user, answer = record["data"][0]["content"], record["data"][1]["content"]
            messages = [{"role": "system", "content": record["meta_prompt"]}, {"role": "user", "content": user}]
            prompt = encode_chat(messages, tokenizer, markers)
            if len(prompt) > room:
                continue
            (output,) = model.generate([prompt], max_new_tokens=args.max_new_tokens, eos_token_id=turn_end)
            reply_ids = output[len(prompt):]
            ended += bool(reply_ids) and reply_ids[-1] == turn_end
            reply = output_text(tokenizer, [i for i in reply_ids if i != turn_end]).strip()
            in_choices += reply in {normal(choice) for choice in CHOICE_LINE.findall(user)}
            correct += reply == normal(answer)
            if asked < args.show:
                question = user.split("问题：")[-1].split("\n")[0]
                print(f"Q: {question} | reply: {reply!r} | answer: {answer!r}")
            asked += 1
            if asked >= args.limit:
                break
    if not asked:
        print("no question fits the model's positions", file=sys.stderr)
        return 2
    print(f"{asked} questions: {ended / asked:.1%} of replies end at the turn end, {in_choices / asked:.1%} are one "
          f"of the choices, {correct / asked:.1%} are the answer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
