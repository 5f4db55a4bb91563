"""A ctypes binding to libespeak-ng, as shipped by the ``espeakng-loader`` wheel.

libespeak-ng keeps global state and is not thread-safe, so nothing here locks: every call on an
``Engine`` must come from one thread (``speech_router.backends.espeak`` owns that thread). Signatures
follow espeak-ng's ``speak_lib.h`` (API revision 12) and, for slowing speech down, the ``sonic``
time-stretcher that libespeak-ng embeds for its own fast rates.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000  # without it a failed init calls exit(1)
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE = 1
EE_OK = 0
RATE_NORMAL = 175  # espeakRATE_NORMAL, words per minute
#: below this espeak silently plays at 80 wpm (setlengths.c clamps it); above 450 it speeds up with sonic
RATE_MINIMUM = 80
_VOICE_NAME_MAX = 60  # espeak copies names into a 60-byte buffer

_c_short_p = ctypes.POINTER(ctypes.c_short)


class _Event(ctypes.Structure):
    """``espeak_EVENT``; only passed through, never read."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_void_p),
    ]


class _Voice(ctypes.Structure):
    """``espeak_VOICE``, to select a voice by language."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


#: ``int t_espeak_callback(short *wav, int numsamples, espeak_EVENT *events)``; return 1 to abort
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, _c_short_p, ctypes.c_int, ctypes.POINTER(_Event))

#: receives mono int16 little-endian bytes; returns True to stop the synthesis
OnSamples = Callable[[bytes], bool]


class EngineUnavailable(Exception):
    """libespeak-ng cannot be loaded or initialised here; the message says why."""


class Engine:
    """The process's one initialised libespeak-ng. Use from a single thread only."""

    def __init__(self, lib: ctypes.CDLL, sample_rate: int, version: str) -> None:
        self._lib = lib
        self.sample_rate = sample_rate
        self.version = version
        self.can_stretch = all(hasattr(lib, f) for f in _SONIC_FUNCTIONS)
        if self.can_stretch:
            _declare_sonic(lib)
        self._on_samples: OnSamples | None = None
        # kept on the instance: libespeak-ng holds only the raw pointer
        self._callback = _SynthCallback(self._dispatch)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    @classmethod
    def load(cls) -> Engine:
        """Load the wheel's library and initialise it with the wheel's data."""
        try:
            import espeakng_loader
        except ImportError as exc:
            raise EngineUnavailable(f"the espeakng-loader package is not installed ({exc})") from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:
            raise EngineUnavailable(f"libespeak-ng could not be loaded ({exc})") from exc
        _declare(lib)
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineUnavailable(f"espeak_Initialize failed with status {rate} (data path {data_path})")
        version = (lib.espeak_Info(None) or b"").decode(errors="replace")
        return cls(lib, rate, version)

    def set_voice(self, name: str) -> bool:
        """Select a voice (``en-us``, ``en-gb``, ``cmn``, ``en-us+f3``); False if espeak does not know it.

        Like the ``espeak-ng -v`` command, a name that is no voice file or voice name is tried as a
        language (``en-gb`` is the voice ``gmw/en``), keeping a ``+variant``.
        """
        if name == self._voice:
            return True
        self._voice = None
        if not name.strip() or len(name) >= _VOICE_NAME_MAX:
            return False
        lib = self._lib
        if lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
            language, _, variant = name.partition("+")
            selector = _Voice(languages=language.encode())
            if not language or lib.espeak_SetVoiceByProperties(ctypes.byref(selector)) != EE_OK:
                return False
            current = lib.espeak_GetCurrentVoice()
            identifier = current.contents.identifier if current else None
            if variant and identifier:
                if lib.espeak_SetVoiceByName(identifier + b"+" + variant.encode()) != EE_OK:
                    return False
        self._voice = name
        return True

    def set_rate(self, wpm: int) -> None:
        self._lib.espeak_SetParameter(PARAM_RATE, wpm, 0)

    def synth(self, text: str, on_samples: OnSamples) -> int:
        """Synthesize ``text``, handing each buffer to ``on_samples`` as it is made; returns the status."""
        data = text.replace("\x00", " ").encode()
        self._on_samples = on_samples
        try:
            status = self._lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
        finally:
            self._on_samples = None
        return int(status)

    def stretcher(self, speed: float) -> Stretcher:
        """A sonic stream that changes duration by ``1/speed`` and keeps the pitch."""
        if not self.can_stretch:
            raise EngineUnavailable("this libespeak-ng build does not export sonic")
        return Stretcher(self._lib, self.sample_rate, speed)

    def _dispatch(self, wav: ctypes._Pointer[ctypes.c_short], n: int, events: object) -> int:
        if n <= 0 or not wav or self._on_samples is None:
            return 0
        try:
            return 1 if self._on_samples(ctypes.string_at(wav, n * 2)) else 0
        except BaseException:  # an exception must not unwind through C; stop instead
            return 1


class Stretcher:
    """Sonic's pitch-preserving time scaling, fed and drained on the engine's thread."""

    def __init__(self, lib: ctypes.CDLL, sample_rate: int, speed: float) -> None:
        self._lib = lib
        self._stream = lib.sonicCreateStream(sample_rate, 1)
        if not self._stream:
            raise MemoryError("sonicCreateStream failed")
        lib.sonicSetSpeed(self._stream, speed)

    def process(self, pcm: bytes) -> bytes:
        n = len(pcm) // 2
        buf = (ctypes.c_short * n).from_buffer_copy(pcm[: n * 2])
        self._lib.sonicWriteShortToStream(self._stream, buf, n)
        return self._drain()

    def flush(self) -> bytes:
        self._lib.sonicFlushStream(self._stream)
        return self._drain()

    def close(self) -> None:
        if self._stream:
            self._lib.sonicDestroyStream(self._stream)
            self._stream = None

    def _drain(self) -> bytes:
        available = self._lib.sonicSamplesAvailable(self._stream)
        if available <= 0:
            return b""
        out = (ctypes.c_short * available)()
        got = self._lib.sonicReadShortFromStream(self._stream, out, available)
        return bytes(out)[: max(got, 0) * 2]


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
    lib.espeak_GetCurrentVoice.argtypes = []
    lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int


_SONIC_FUNCTIONS = (
    "sonicCreateStream",
    "sonicSetSpeed",
    "sonicWriteShortToStream",
    "sonicReadShortFromStream",
    "sonicSamplesAvailable",
    "sonicFlushStream",
    "sonicDestroyStream",
)


def _declare_sonic(lib: ctypes.CDLL) -> None:
    lib.sonicCreateStream.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.sonicCreateStream.restype = ctypes.c_void_p
    lib.sonicSetSpeed.argtypes = [ctypes.c_void_p, ctypes.c_float]
    lib.sonicSetSpeed.restype = None
    lib.sonicWriteShortToStream.argtypes = [ctypes.c_void_p, _c_short_p, ctypes.c_int]
    lib.sonicWriteShortToStream.restype = ctypes.c_int
    lib.sonicReadShortFromStream.argtypes = [ctypes.c_void_p, _c_short_p, ctypes.c_int]
    lib.sonicReadShortFromStream.restype = ctypes.c_int
    lib.sonicSamplesAvailable.argtypes = [ctypes.c_void_p]
    lib.sonicSamplesAvailable.restype = ctypes.c_int
    lib.sonicFlushStream.argtypes = [ctypes.c_void_p]
    lib.sonicFlushStream.restype = ctypes.c_int
    lib.sonicDestroyStream.argtypes = [ctypes.c_void_p]
    lib.sonicDestroyStream.restype = None
