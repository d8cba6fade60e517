"""The Grok-1 SentencePiece tokenizer, used as the official runner uses it: no BOS, no EOS."""

from __future__ import annotations

from pathlib import Path

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.errors import CheckpointError, NotFoundError
from grokfetch.fsutil import file_sha256

#: sha256 of the released ``tokenizer.model`` (`docs/grok1-format.md` §1.1).
GROK1_TOKENIZER_SHA256 = "5c69d7cbad192fa2c9d14e2a77fbfdc11597c68907b043ddb0260e3d28eddd7f"


class Tokenizer:
    """A loaded ``tokenizer.model``; ``encode`` adds no BOS (ids < ``vocab_size``)."""

    def __init__(self, path: Path | str):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(self.path, TOKENIZER_FILENAME,
                                hint="pass --tokenizer PATH, or --tokens 1,2,3 instead of --prompt")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(self.path, f"not a SentencePiece model ({exc})") from None

    @property
    def vocab_size(self) -> int:
        return int(self.sp.vocab_size())

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.sp.encode(text)]

    def decode(self, ids: list[int]) -> str:
        return str(self.sp.decode([int(i) for i in ids]))

    def sha256(self) -> str:
        return file_sha256(self.path)
