"""Videos for EMO-R3: read a video row's entries and sample their frames once, as EasyR1 does. data.py's
`PromptDataset` calls this for its video rows; image sources are decoded here too (`open_image`), since a frame
list is a list of images: data.py imports that from here, and this module imports none of ours.

Video rows have `videos` instead of `images` (EasyR1's key): each entry is one video, either a video file path
(relative like images; decoded with PyAV) or a list of frame images (any image source `open_image` takes), so a frame
list is nested: `"videos": [["f0.jpg", "f1.jpg"]]`; a single non-list value is one video. Frames are sampled as EasyR1
does (qwen-vl-utils' fetch_video: 2 frames a second, 4 to 768 of them, an even count, each resized within a per-frame
pixel budget): see `load_video`. A video is sampled once into a `Video` (frames at their final size + the rate of
those frames), given as it is to the trainer and to vLLM. `video_shape` gives the sampled frame count and size from
the container (or the first frame's header) alone, nothing decoded, for the prompt-length check at load.
"""

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Video, as EasyR1 reads it: qwen-vl-utils' fetch_video (EasyR1's verl/utils/dataset.py, process_video).
VIDEO_FPS = 2.0  # EasyR1's data.video_fps, and qwen-vl-utils' FPS
VIDEO_MIN_PIXELS = 512 * 512  # per-frame floor: EasyR1 passes its (image) data.min_pixels, 512 * 512, to fetch_video
#   for videos too, in place of qwen-vl-utils' own floor (VIDEO_MIN_TOKEN_NUM * 28 * 28 = 100352)
VIDEO_MAX_PIXELS = 768 * 28 * 28  # qwen-vl-utils' per-frame cap (VIDEO_MAX_TOKEN_NUM * 28 * 28 = 602112), to which
#                                   fetch_video also lowers EasyR1's max_pixels (2048 * 2048)
VIDEO_MAX_FRAMES = 768  # qwen-vl-utils' FPS_MAX_FRAMES (EasyR1 passes no max_frames)
VIDEO_MIN_FRAMES = 4  # qwen-vl-utils' FPS_MIN_FRAMES
VIDEO_TOTAL_PIXELS = 128000 * 28 * 28 * 0.9  # qwen-vl-utils' total_pixels budget (MODEL_SEQ_LEN 128000 tokens, 90%)
FRAME_FACTOR = 2  # frames go in pairs: Qwen2.5-VL's temporal_patch_size is 2
QWEN_VIDEO_PIXELS = (128 * 28 * 28, 768 * 28 * 28)  # Qwen2VLVideoProcessor's own default pixel range


@dataclass
class Video:
    """One video as the model sees it: frames sampled and resized once (`load_video`), given as they are to the
    trainer and to vLLM. `frames`: RGB PIL images, all of the final size (multiples of 28), an even count;
    `fps`: the rate of these sampled frames (what sets the time positions: second_per_grid_ts = 2 / fps)."""
    frames: list
    fps: float

    def array(self):
        """The frames as uint8 (T, H, W, 3), the form the HF processor and vLLM take."""
        return np.stack([np.asarray(frame) for frame in self.frames])

    def metadata(self):
        """The sampled frames presented as the whole video, so nothing samples again: transformers'
        VideoMetadata.sampled_fps = len(frames_indices) / total_num_frames * fps = fps, and vLLM reads
        do_sample_frames=False (transformers' VideoMetadata has no such field: `data.processor_inputs` drops it)."""
        count = len(self.frames)
        return dict(fps=self.fps, total_num_frames=count, frames_indices=list(range(count)),
                    duration=count / self.fps, video_backend="pyav", do_sample_frames=False)


# --- image sources (a frame list is a list of images) -------------------------------------------

def open_image(source, base_dir, size_only=False):
    """Decode one image source to an RGB PIL image (fully loaded, so truncation shows up here), or with
    size_only, return its (width, height) read from the header alone, no pixel decoded."""
    if isinstance(source, Image.Image):
        return source.size if size_only else to_rgb(source)
    if isinstance(source, dict):  # Hugging Face datasets' Image feature in parquet
        source = source.get("bytes") or source.get("path")
    if not source:  # "", None, b"", or a dict with neither bytes nor path
        raise OSError(f"empty image field {source!r}: no path and no bytes")
    if isinstance(source, (bytes, bytearray)):
        file = io.BytesIO(source)
    elif isinstance(source, str):
        file = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
        if not file.is_file():  # a folder, or a named pipe that would block open() forever
            raise OSError(f"not a file: {file}" if file.exists() else f"no such file: {file}")
        if file.stat().st_size == 0:  # PIL would only say "cannot identify image file"
            raise OSError(f"empty file (0 bytes): {file}")
    else:
        raise OSError(f"unsupported image field {type(source).__name__}: {str(source)[:80]!r}")
    with warnings.catch_warnings():
        # Image.open reads only the header and refuses more than 2 * MAX_IMAGE_PIXELS; between 1x and
        # 2x it only warns, and load() would then decode it: make that an error too, before decoding
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(file)
    if size_only:
        image.close()
        return image.size
    image.load()
    return to_rgb(image)


def to_rgb(image):
    """RGB pixels as a viewer shows them: transparency composed on white, 16-bit grey scaled to 8 bits.

    qwen-vl-utils' to_rgb composes only RGBA on white and converts the rest with PIL, which drops the
    alpha of LA and of palette images with transparency (showing the hidden colour), and clips 16-bit
    grey (I;16, and I as Pillow opens 16-bit files) at 255, so a 16-bit photo comes out all white.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64) / 257  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L")
    if image.has_transparency_data:  # RGBA, LA, PA, or a palette / grey / RGB image with a transparent colour
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")  # also CMYK, P without transparency, L, 1, YCbCr


# --- sampling -----------------------------------------------------------------------------------

def qwen_smart_resize(height, width, factor, min_pixels, max_pixels):
    """(height, width) by qwen-vl-utils' smart_resize, which fetch_video uses (it differs from transformers' only
    for sides under `factor`): sides rounded to multiples of `factor` within the pixel range, aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200 ({width}x{height})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_frame_size(width, height, num_frames, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS,
                     processor_pixels=QWEN_VIDEO_PIXELS):
    """(width, height) of every frame of a `num_frames` video whose frames are width x height: fetch_video's
    per-frame budget (at most max_pixels, and at most a 2/num_frames share of VIDEO_TOTAL_PIXELS, but never
    under 1.05 * min_pixels), then qwen-vl-utils' smart_resize. `max_pixels` stands where fetch_video has its
    fixed cap (602112): with the defaults the two are the same. Sizes the processor would resize again (its
    own video pixel range, `processor_pixels`) are refused naming the size."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize
    budget = max(min(max_pixels, VIDEO_TOTAL_PIXELS / num_frames * FRAME_FACTOR), int(min_pixels * 1.05))
    try:
        final = qwen_smart_resize(height, width, 28, min_pixels, budget)
        if 0 in final or smart_resize(*final, 28, *processor_pixels) != final:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"video frames of {width}x{height} pixels ({num_frames} sampled) cannot be sized for the "
                         f"processor (video pixel range {processor_pixels[0]}..{processor_pixels[1]}, sides >= 28 px, "
                         f"aspect ratio <= 200): check video_min_pixels / video_max_pixels") from None
    return final[1], final[0]


def sample_count(total_frames, source_fps, fps=VIDEO_FPS, max_frames=VIDEO_MAX_FRAMES):
    """How many frames to sample from a video file: qwen-vl-utils' smart_nframes with `fps` (duration * fps,
    kept within 4..max_frames and the video's own frame count, then rounded down to an even number)."""
    min_frames = math.ceil(VIDEO_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
    count = min(min(max(total_frames / source_fps * fps, min_frames), max_frames), total_frames)
    count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total_frames:
        raise ValueError(f"a video of {total_frames} frame(s) cannot be sampled: it needs at least {FRAME_FACTOR}")
    return count


def sample_indices(total, count):
    """qwen-vl-utils' frame indices: torch.linspace(0, total - 1, count).round() (torch's float32 linspace and
    round-half-to-even, so the same frames are chosen)."""
    import torch
    return torch.linspace(0, total - 1, count).round().long().tolist()


def _video_file(source, base_dir):
    if not isinstance(source, str) or not source:
        raise OSError(f"unsupported video field {str(source)[:80]!r}: expected a video file path or a list of frames")
    file = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
    if not file.is_file():
        raise OSError(f"not a file: {file}" if file.exists() else f"no such file: {file}")
    if file.stat().st_size == 0:
        raise OSError(f"empty file (0 bytes): {file}")
    return file


def video_info(file):
    """(total frames, frame rate, width, height) of a video file from its container, nothing decoded."""
    import av
    with av.open(str(file)) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {file}")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        # some containers (webm, mkv) do not store the count: count the packets instead (demuxed, not decoded)
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        width, height = stream.codec_context.width, stream.codec_context.height
    if total <= 0 or rate <= 0 or not width or not height:
        raise ValueError(f"not a usable video ({total} frames, {rate:g} fps, {width}x{height}): {file}")
    return total, rate, width, height


def _decode(file, indices, size):
    """The frames at `indices` (sorted, distinct), decoded in order and each resized (bicubic) to `size` at once,
    and how many frames were decoded (all of them when the stream ends before the last index)."""
    import av
    wanted, frames, decoded = set(indices), [], 0
    with av.open(str(file)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for decoded, frame in enumerate(container.decode(stream), 1):
            if decoded - 1 in wanted:
                frames.append(frame.to_image().resize(size, Image.BICUBIC))  # to_image: RGB
            if decoded > indices[-1]:
                break
    return frames, decoded


def _frame_count(given, max_frames):
    """Frames kept from a frame list of `given`: all, padded to an even count (the last frame repeated), or when
    over max_frames, a uniform choice of max_frames (rounded down to even)."""
    max_frames = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
    return max_frames if given > max_frames else math.ceil(given / FRAME_FACTOR) * FRAME_FACTOR


def video_shape(source, base_dir, fps=VIDEO_FPS, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS,
                max_frames=VIDEO_MAX_FRAMES, processor_pixels=QWEN_VIDEO_PIXELS):
    """(sampled frames, width, height) that `load_video` gives, from the container or the first frame's header
    alone: what the prompt length needs, without decoding."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("empty list of frames")
        count, (width, height) = _frame_count(len(source), max_frames), open_image(source[0], base_dir, True)
    else:
        total, rate, width, height = video_info(_video_file(source, base_dir))
        count = sample_count(total, rate, fps, max_frames)
    return (count, *video_frame_size(width, height, count, min_pixels, max_pixels, processor_pixels))


def load_video(source, base_dir, fps=VIDEO_FPS, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS,
               max_frames=VIDEO_MAX_FRAMES, processor_pixels=QWEN_VIDEO_PIXELS):
    """Sample one video as EasyR1 does (qwen-vl-utils' fetch_video) into a `Video`.

    - A video file (decoded with PyAV): `sample_count` frames at `sample_indices` over the whole video, and
      fps = count / total * the file's rate (fetch_video's sample_fps, so EasyR1's second_per_grid_ts = 2 / fps).
    - A list of frame images: taken as already sampled at `fps` (as qwen-vl-utils takes them), padded to an
      even count by repeating the last frame. Ours only: a list over max_frames is sub-sampled uniformly
      (linspace, rounded) to max_frames, its fps scaled by the share kept, so the frames keep their times.
    Every frame is resized (bicubic) to `video_frame_size` (from the first frame for a list), a size the
    processor and vLLM leave as it is. Raises on anything unusable (missing file, not a video, no frames)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("empty list of frames")
        count = _frame_count(len(source), max_frames)
        if count < len(source):
            chosen, fps = sample_indices(len(source), count), fps * count / len(source)
        else:
            chosen = list(range(len(source))) + [len(source) - 1] * (count - len(source))
        first = open_image(source[0], base_dir)
        size = video_frame_size(*first.size, count, min_pixels, max_pixels, processor_pixels)
        opened = {0: first}
        for i in chosen:
            if i not in opened:
                opened[i] = open_image(source[i], base_dir)
        resized = {i: image if image.size == size else image.resize(size, Image.BICUBIC) for i, image in opened.items()}
        return Video([resized[i] for i in chosen], float(fps))
    file = _video_file(source, base_dir)
    total, rate, width, height = video_info(file)
    count = sample_count(total, rate, fps, max_frames)
    frames, decoded = _decode(file, sample_indices(total, count),
                              video_frame_size(width, height, count, min_pixels, max_pixels, processor_pixels))
    if len(frames) < count:  # the container counts more frames than the stream holds: sample the real ones
        total, count = decoded, sample_count(decoded, rate, fps, max_frames)
        frames, _ = _decode(file, sample_indices(total, count),
                            video_frame_size(width, height, count, min_pixels, max_pixels, processor_pixels))
    return Video(frames, count / total * rate)


def video_token_count(video, processor):
    """How many <|video_pad|> tokens the processor expands one `Video` (or (num_frames, width, height)) into:
    (T / temporal_patch_size) * (H / patch) * (W / patch) / merge^2, (T/2) * (H/28) * (W/28) for Qwen2.5-VL."""
    vp = processor.video_processor
    frames, width, height = video if isinstance(video, tuple) else (len(video.frames), *video.frames[0].size)
    grid_t = math.ceil(frames / vp.temporal_patch_size)  # the processor pads an odd count; ours are even anyway
    return grid_t * (height // vp.patch_size) * (width // vp.patch_size) // (vp.merge_size * vp.merge_size)


def video_kwargs(cfg):
    """data.PromptDataset's video settings from a run config with the same field names (train_grpo, sft, evaluate)."""
    return {key: getattr(cfg, key) for key in ("video_fps", "video_min_pixels", "video_max_pixels", "video_max_frames")}
