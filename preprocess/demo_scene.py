"""The demo world's room: walls hung with real photographs, rendered by a numpy pinhole ray-cast.

World frame: x east, y north, z up, metres; the floor is z = 0. The room is the box
[0, Lx] x [0, Ly] x [0, height]. Its walls are cut into panels of `panel_width` metres, each
showing one photograph bundled with scikit-image, so a view tells where one stands (perspective)
and where one looks (which photographs). Cameras follow OpenCV: x right, y down, z forward;
a camera is given by R (world->camera rotation, [3, 3]) and its centre c (world, [3]), so that
p_cam = R @ (p_world - c), and by pinhole intrinsics K ([3, 3], pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["PHOTOS", "Room", "photograph", "pinhole_intrinsics"]

# (scikit-image sample, RGB tint for grey-level photographs or None). The package ships these
# files; no download is needed.
PHOTOS: tuple[tuple[str, tuple[int, int, int] | None], ...] = (
    ("astronaut", None),
    ("chelsea", None),
    ("coffee", None),
    ("rocket", None),
    ("hubble_deep_field", None),
    ("immunohistochemistry", None),
    ("retina", None),
    ("stereo_motorcycle", None),
    ("colorwheel", None),
    ("logo", None),
    ("camera", (120, 170, 255)),
    ("coins", (255, 200, 90)),
    ("clock", (140, 255, 140)),
    ("moon", (210, 150, 255)),
    ("brick", (255, 120, 110)),
    ("page", (110, 240, 240)),
)


_FLOOR_PX_PER_M = 12  # a coarse floor: fine gravel would alias into noise far away


def photograph(name: str, tint: tuple[int, int, int] | None = None) -> np.ndarray:
    """One scikit-image sample as [H, W, 3] uint8 RGB (grey levels multiplied by `tint`)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs: take the left view
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:  # RGBA on white
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
    if image.ndim == 2:
        grey = image.astype(np.float32)[..., None]  # [H, W, 1]
        # A mild tint: saturated colour on fine grey detail is unlike camera footage.
        image = grey * (0.6 + 0.4 * np.asarray(tint or (255, 255, 255), np.float32) / 255.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def pinhole_intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K [3, 3] of a pinhole camera with horizontal field of view `fov_deg`, square pixels."""
    focal = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float64)


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop `image` to the aspect height:width and resize it to [height, width, 3]."""
    h, w = image.shape[:2]
    if w * height > h * width:
        cw = h * width // height
        image = image[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = w * height // width
        image = image[(h - ch) // 2 : (h - ch) // 2 + ch]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _bilinear(texture: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample texture [h, w, 3] float32 at fractional (rows, cols) [n], wrapping both axes."""
    h, w = texture.shape[:2]
    flat = texture.reshape(h * w, 3)
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[:, None], (cols - c0)[:, None]  # [n, 1]
    r0, c0 = r0.astype(np.int64) % h, c0.astype(np.int64) % w
    r1, c1 = (r0 + 1) % h * w, (c0 + 1) % w
    r0 = r0 * w
    top = flat.take(r0 + c0, axis=0)  # [n, 3]
    top += (flat.take(r0 + c1, axis=0) - top) * fc
    bottom = flat.take(r1 + c0, axis=0)
    bottom += (flat.take(r1 + c1, axis=0) - bottom) * fc
    return top + (bottom - top) * fr


@dataclass
class Room:
    """A box-shaped room whose four walls are a strip of photograph panels.

    Args:
        size: (Lx, Ly) floor size in metres; both must be multiples of `panel_width`.
        height: wall height in metres.
        panel_width: width of one photograph panel in metres.
        px_per_m: texture resolution of walls and floor.
    """

    size: tuple[float, float] = (7.5, 4.5)
    height: float = 2.6
    panel_width: float = 1.5
    px_per_m: int = 64
    _strip: np.ndarray = field(init=False, repr=False)
    _floor: np.ndarray = field(init=False, repr=False)
    _rays: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        lx, ly = self.size
        perimeter = 2 * (lx + ly)
        self.num_panels = int(round(perimeter / self.panel_width))
        if self.num_panels > len(PHOTOS):
            raise ValueError(f"the room needs {self.num_panels} panels, only {len(PHOTOS)} photos")
        ph, pw = int(self.height * self.px_per_m), int(self.panel_width * self.px_per_m)
        border = max(1, self.px_per_m // 12)
        panels = []
        for name, tint in PHOTOS[: self.num_panels]:
            panel = np.full((ph, pw, 3), 40, np.uint8)  # dark frame around each photograph
            panel[border:-border, border:-border] = _fit(
                photograph(name, tint), ph - 2 * border, pw - 2 * border
            )
            panels.append(panel[:, ::-1])  # the strip runs leftwards seen from inside
        self._strip = np.concatenate(panels, axis=1).astype(np.float32)  # [ph, P * pw, 3]
        floor = photograph("gravel", (200, 170, 130))
        self._floor = _fit(floor, 2 * _FLOOR_PX_PER_M, 2 * _FLOOR_PX_PER_M).astype(np.float32)

    @property
    def panel_names(self) -> list[str]:
        """The photograph shown by each panel, in perimeter order (south, east, north, west)."""
        return [name for name, _ in PHOTOS[: self.num_panels]]

    def panel_centre(self, panel: int) -> tuple[np.ndarray, np.ndarray]:
        """World position [3] of a panel's centre and the wall's inward normal [3]."""
        lx, ly = self.size
        s = (panel + 0.5) * self.panel_width
        z = self.height / 2
        if s < lx:
            return np.array([s, 0.0, z]), np.array([0.0, 1.0, 0.0])
        if s < lx + ly:
            return np.array([lx, s - lx, z]), np.array([-1.0, 0.0, 0.0])
        if s < 2 * lx + ly:
            return np.array([2 * lx + ly - s, ly, z]), np.array([0.0, -1.0, 0.0])
        return np.array([0.0, 2 * (lx + ly) - s, z]), np.array([1.0, 0.0, 0.0])

    def _camera_rays(self, K: np.ndarray, height: int, width: int) -> np.ndarray:
        key = (height, width, K.tobytes())
        if key not in self._rays:
            v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
            pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)  # [n, 3]
            self._rays[key] = pixels @ np.linalg.inv(K).T  # [n, 3] camera frame, z = 1
        return self._rays[key]

    def render(
        self, R: np.ndarray, c: np.ndarray, K: np.ndarray, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ray-cast one view from inside the room.

        Args:
            R: [3, 3] world->camera rotation; c: [3] camera centre in the world (metres);
            K: [3, 3] intrinsics; height, width: image size in pixels.

        Returns:
            image [height, width, 3] uint8 RGB, and panel [height, width] int16: the panel each
            pixel shows (-1 on floor and ceiling).
        """
        lx, ly = self.size
        dx, dy, dz = (self._camera_rays(K, height, width) @ R).T  # [n] each: world directions
        n = len(dx)

        def exit_distance(d: np.ndarray, origin: float, upper: float) -> np.ndarray:
            d = np.where(d == 0, 1e-12, d)
            return (np.where(d > 0, upper, 0.0) - origin) / d  # [n] metres along the ray

        tx, ty, tz = exit_distance(dx, c[0], lx), exit_distance(dy, c[1], ly), exit_distance(
            dz, c[2], self.height
        )
        t = np.minimum(tx, np.minimum(ty, tz))  # [n] the first plane hit is the exit
        px, py, pz = c[0] + t * dx, c[1] + t * dy, c[2] + t * dz  # [n] hit points
        on_y, on_x = (t == ty), (t == tx) & (t != ty)
        wall = on_x | on_y
        image = np.empty((n, 3), np.float32)  # [n, 3]
        panel = np.full(n, -1, np.int16)

        s = np.where(
            on_y,
            np.where(dy < 0, px, 2 * lx + ly - px),  # south / north walls
            np.where(dx > 0, lx + py, 2 * lx + 2 * ly - py),  # east / west walls
        )[wall]  # perimeter coordinate, metres
        image[wall] = _bilinear(
            self._strip, (self.height - pz[wall]) * self.px_per_m - 0.5, s * self.px_per_m - 0.5
        )
        panel[wall] = np.minimum(s // self.panel_width, self.num_panels - 1).astype(np.int16)

        floor = ~wall & (dz < 0)
        image[floor] = _bilinear(self._floor, py[floor] * _FLOOR_PX_PER_M, px[floor] * _FLOOR_PX_PER_M)
        image[~wall & (dz > 0)] = 215.0  # plain ceiling
        distance = t * np.sqrt(dx * dx + dy * dy + dz * dz)  # [n] metres
        image *= np.exp(-0.03 * distance)[:, None]  # depth cue
        image = np.clip(image, 0, 255).astype(np.uint8)
        return image.reshape(height, width, 3), panel.reshape(height, width)
