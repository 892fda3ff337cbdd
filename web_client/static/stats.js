// What a viewer sees of a received feed's health, from RTCPeerConnection.getStats(): no DOM.

/**
 * @typedef {{delayMs: number, kbps: number, fps: number, lossPct: number, framesDecoded: number,
 *            samplesReceived: number, width: number, height: number}} FeedHealth
 */

/** Measures one peer connection's inbound video and audio between calls. */
export class HealthMeter {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    this.lastBytes = 0;
    this.lastTime = 0;
  }

  /** @returns {Promise<FeedHealth>} */
  async read() {
    const report = await this.pc.getStats();
    let bytes = 0;
    let fps = 0;
    let lost = 0;
    let received = 0;
    let framesDecoded = 0;
    let samplesReceived = 0;
    let jitterDelay = 0;
    let rtt = 0;
    let width = 0;
    let height = 0;
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp") {
        bytes += s.bytesReceived || 0;
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        if (s.kind === "video") {
          fps = s.framesPerSecond || fps;
          framesDecoded += s.framesDecoded || 0;
          // The size decoded: with simulcast, which layer this viewer's link is given.
          width = s.frameWidth || width;
          height = s.frameHeight || height;
          if (s.jitterBufferEmittedCount) jitterDelay = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
        } else {
          samplesReceived += s.totalSamplesReceived || 0;
        }
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime) rtt = 1000 * s.currentRoundTripTime;
    });
    const now = performance.now();
    const kbps = this.lastTime ? (8 * (bytes - this.lastBytes)) / (now - this.lastTime) : 0;
    this.lastBytes = bytes;
    this.lastTime = now;
    return {
      // Network one way (half the round trip) plus what waits in the jitter buffer.
      delayMs: Math.round(rtt / 2 + jitterDelay),
      kbps: Math.max(0, Math.round(kbps)),
      fps: Math.round(fps),
      lossPct: received + lost ? Math.round((1000 * lost) / (received + lost)) / 10 : 0,
      framesDecoded,
      samplesReceived,
      width,
      height,
    };
  }
}

/**
 * How good a link is from its loss, round trip and jitter: thresholds where a voice starts to
 * break up (fair) and where a picture stalls or talk-back becomes hard (poor).
 * @param {{lossPct: number, rttMs: number, jitterMs: number}} link
 * @returns {"good" | "fair" | "poor"}
 */
export function grade({ lossPct, rttMs, jitterMs }) {
  if (lossPct >= 5 || rttMs >= 600 || jitterMs >= 80) return "poor";
  if (lossPct >= 1.5 || rttMs >= 250 || jitterMs >= 30) return "fair";
  return "good";
}

/**
 * @typedef {{lossPct: number, rttMs: number, jitterMs: number, levels: Map<string, number>}} LinkReading
 *   a connection's loss since the last reading, round trip, jitter, and the audio level (0..1)
 *   of each received track by its id
 */

/** Reads one peer connection's link, sending or receiving, between calls. */
export class LinkMeter {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    this.lost = 0;
    this.received = 0;
  }

  /** @returns {Promise<LinkReading>} */
  async read() {
    const report = await this.pc.getStats();
    let lost = 0;
    let received = 0;
    let rtt = 0;
    let jitter = 0;
    let remoteLoss = -1;
    /** @type {Map<string, number>} */
    const levels = new Map();
    report.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp") {
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        jitter = Math.max(jitter, s.jitter || 0);
        if (s.kind === "audio" && s.trackIdentifier) levels.set(s.trackIdentifier, s.audioLevel || 0);
      }
      if (s.type === "remote-inbound-rtp") {
        // What the server says of what this page sends.
        remoteLoss = Math.max(remoteLoss, s.fractionLost || 0);
        jitter = Math.max(jitter, s.jitter || 0);
        if (s.roundTripTime) rtt = Math.max(rtt, s.roundTripTime);
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime) rtt = Math.max(rtt, s.currentRoundTripTime);
    });
    const newLost = Math.max(0, lost - this.lost);
    const newReceived = Math.max(0, received - this.received);
    this.lost = lost;
    this.received = received;
    const lossPct = remoteLoss >= 0 ? 100 * remoteLoss : newLost + newReceived ? (100 * newLost) / (newLost + newReceived) : 0;
    return { lossPct, rttMs: 1000 * rtt, jitterMs: 1000 * jitter, levels };
  }
}
