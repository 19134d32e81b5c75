"""A small Chinese corpus written for the demo: short paragraphs built from fixed phrase lists.

It is regular enough that a tiny model learns it in a few minutes on a CPU, so the demo shows a loss that
clearly falls and a continuation that reads like the corpus.
"""

from __future__ import annotations

import itertools
from pathlib import Path

SEASONS = ["春天来了，天气很暖和", "夏天到了，太阳很热", "秋天来了，树叶黄了", "冬天到了，外面下雪了"]
PEOPLE = ["小明", "小红", "老师", "爷爷", "妈妈", "孩子们"]
PLACES_AND_ACTIVITIES = [("公园", "散步"), ("学校", "读书"), ("河边", "钓鱼"), ("山上", "看风景"),
                         ("市场", "买菜"), ("图书馆", "看书")]
FEELINGS = ["觉得很开心", "觉得很累", "笑得很高兴", "想明天再来"]


def paragraphs() -> list[str]:
    out = []
    for number, (season, person, (place, activity)) in enumerate(
            itertools.product(SEASONS, PEOPLE, PLACES_AND_ACTIVITIES)):
        feeling = FEELINGS[number % len(FEELINGS)]
        out.append(f"{season}。{person}去{place}{activity}。{person}{feeling}。")
    return out


def write_corpus(path: Path) -> Path:
    """Write the corpus (paragraphs separated by blank lines) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(paragraphs()) + "\n", encoding="utf-8")
    return path
