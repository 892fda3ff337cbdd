// How this client's peer connections are set up: how each source's video is sent (content
// hint, degradation preference, ceiling, simulcast layers), what a feed declares of its picture,
// and waiting for ICE gathering. No DOM, no signaling.

/** @typedef {import("./protocol.js").Feed} Feed */

/**
 * How each source's video is sent: what the encoder keeps when the link or the CPU cannot carry
 * everything, and the most it may spend (docs/web_client.md, "Sending video").
 * @type {Record<string, {contentHint: string, degradationPreference: RTCDegradationPreference, maxBitrate: number}>}
 */
export const SEND_POLICY = {
  // An ultrasound image is read for fine grey-level detail (speckle, thin boundaries, calipers):
  // every pixel is kept and the frame rate gives way; 4 Mbit/s carries 1080p at 30 frames/s.
  probe: { contentHint: "detail", degradationPreference: "maintain-resolution", maxBitrate: 4_000_000 },
  // Laparoscopy: tissue texture and instrument tips, in colour and with more motion.
  laparoscope: { contentHint: "detail", degradationPreference: "maintain-resolution", maxBitrate: 6_000_000 },
  // The room camera shows people and hands: smooth motion matters more than sharpness.
  camera: { contentHint: "motion", degradationPreference: "maintain-framerate", maxBitrate: 1_500_000 },
  // A shared screen holds text that must stay legible.
  screen: { contentHint: "text", degradationPreference: "maintain-resolution", maxBitrate: 2_500_000 },
};

/**
 * Simulcast: the same picture at full, half and quarter size, lowest first, each with its
 * ceiling. The server gives each viewer the largest its own link carries, so one weak link
 * costs that viewer sharpness and nobody else; the recording takes the full size. Chromium
 * sends at most three layers of 960×540 and up, two of 480×270 and up, one below, and drops the
 * largest it is asked for past that: so a smaller source is asked for fewer layers, the full
 * size always among them.
 * @param {number} maxBitrate the full size's ceiling
 * @param {MediaTrackSettings} settings the source's size, where known
 * @returns {RTCRtpEncodingParameters[]}
 */
export function layers(maxBitrate, settings) {
  const all = [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: Math.round(maxBitrate / 10) },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: Math.round((maxBitrate * 3) / 10) },
    { rid: "f", scaleResolutionDownBy: 1, maxBitrate },
  ];
  const { width, height } = settings;
  const pixels = width && height ? width * height : Infinity;
  const count = pixels >= 960 * 540 ? 3 : pixels >= 640 * 360 ? 2 : 1;
  if (count === 1) return [{ maxBitrate }];
  return all.slice(all.length - count);
}

/**
 * Tell a sender what to give up first when it cannot send everything (resolution or frame rate).
 * @param {RTCRtpSender} sender @param {RTCDegradationPreference} preference
 */
export async function keep(sender, preference) {
  try {
    await sender.setParameters({ ...sender.getParameters(), degradationPreference: preference });
  } catch (err) {
    console.warn("cannot set the degradation preference", err); // the browser's default applies
  }
}

/**
 * A video feed's size and scale, so that rulers on it measure in pixels or millimetres.
 * @param {Feed} feed
 */
export function geometry(feed) {
  if (feed.track.kind !== "video") return {};
  const { width, height } = feed.track.getSettings();
  /** @type {{width?: number, height?: number, pixel_spacing_mm?: number}} */
  const out = {};
  if (width && height) Object.assign(out, { width: Math.round(width), height: Math.round(height) });
  if (feed.pixelSpacingMm) out.pixel_spacing_mm = feed.pixelSpacingMm;
  return out;
}

/** Whether a peer connection's media path is gone. @param {RTCPeerConnection} pc */
export function dead(pc) {
  return pc.connectionState === "failed" || pc.connectionState === "closed";
}

// Once a connection has the candidates it needs (a host one, and a relayed one when TURN servers
// are set), gathering is waited for only this much longer: a network whose TURN server cannot be
// reached from every interface never finishes, and a reconnect must not wait seconds for it.
const SETTLE_MS = 100;
// With TURN servers set, a relayed candidate is waited for this long after the first host one: a
// hospital firewall that opens the media port but not TURN's must not hold every start for the
// whole timeout (an allocation takes two round trips, 1.2 s over a satellite link).
const RELAY_AFTER_HOST_MS = 2000;

/**
 * Wait until a connection has gathered its ICE candidates (version 1 sends whole SDP).
 * @param {RTCPeerConnection} pc
 * @param {number} [timeoutMs]
 * @returns {Promise<void>}
 */
export function gathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  const relayed = (pc.getConfiguration().iceServers || []).some((s) =>
    [s.urls].flat().some((u) => String(u).startsWith("turn")));
  return new Promise((resolve) => {
    /** @type {ReturnType<typeof setTimeout> | null} */
    let settle = null;
    const finish = () => {
      pc.removeEventListener("icegatheringstatechange", changed);
      pc.removeEventListener("icecandidate", found);
      resolve();
    };
    const changed = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    /** @type {ReturnType<typeof setTimeout> | null} */
    let hostOnly = null;
    const found = (/** @type {RTCPeerConnectionIceEvent} */ ev) => {
      const type = ev.candidate ? ev.candidate.type : null;
      if (settle === null && (type === "relay" || (type === "host" && !relayed))) settle = setTimeout(finish, SETTLE_MS);
      if (hostOnly === null && type === "host" && relayed) hostOnly = setTimeout(finish, RELAY_AFTER_HOST_MS);
    };
    pc.addEventListener("icegatheringstatechange", changed);
    pc.addEventListener("icecandidate", found);
    // Some networks never finish gathering; what was gathered by then must do.
    setTimeout(finish, timeoutMs);
  });
}
