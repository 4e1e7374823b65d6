"""Small real texts shipped with the conformance kit: prose, code, CSV and edge cases."""

from __future__ import annotations

PROSE = (
    "Fellow-Citizens of the Senate and of the House of Representatives: It is with great "
    "satisfaction that I meet you again. \"We hold these truths to be self-evident,\" "
    "they wrote; and so we do! Is the Union strong? Yes... it is (as it was.)\n\n"
    "Mr. Speaker, the state of our Union is strong—stronger than ever.\r\n"
    "She said: “Let us begin.” He answered, ‘Not yet.’\n"
)
CODE = (
    "import os\nimport sys\n\n\ndef add(a: int, b: int = 2) -> int:\n"
    "    \"\"\"Add two ints; return the sum.\"\"\"\n    if a < 0:\n        raise ValueError('a < 0')\n"
    "    return a + b  # the sum\n\n\nclass Table(dict):\n\tdef get(self, key):\n"
    "\t\treturn super().get(key, [1, 2.5, {'x': None}])\n"
)
CSV = (
    '"","mpg","cyl","disp","hp"\n"Mazda RX4",21,6,160,110\n"Datsun 710",22.8,4,108,93\n'
    '"Hornet 4 Drive",21.4,6,258,110\r\n"Valiant",18.1,6,225,105\n'
)
CJK = "你好，世界。这是一个测试！真的吗？是的；好的：「引号」…结束。\n日本語の文です、はい。"
EDGE = [
    "",
    " ",
    "a",
    "\n",
    "\r\n\r\n",
    "...",
    "!?!?!?",
    "x" * 700,  # one long run without a boundary
    "word " * 150,
    "😀🎉 emoji, 4-byte chars. 😀",
    "tab\tseparated\tvalues\n1\t2\t3\n",
    "\ufeffBOM at the start. \u00a0non-breaking\u3000ideographic space.",
]

SAMPLES: dict[str, str] = {"prose": PROSE, "code": CODE, "csv": CSV, "cjk": CJK}


def all_texts() -> list[str]:
    """The domain samples followed by the edge cases."""
    return [*SAMPLES.values(), *EDGE]
