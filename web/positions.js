// positions.js: where each channel's stream stands for this client.
//
// Pure: no I/O, no timers. Guarantee: accept() reports each {epoch, offset} at most once as
// "new"; anything at or below the last position of the same epoch is a "duplicate", so a
// publication seen live, then again in a recovered batch, is delivered once.

/**
 * Where each channel's stream stands for this client (pure, no I/O).
 *
 * accept() classifies a publication: "new" (deliver it), "duplicate" (already seen: drop it),
 * "gap" (offsets were skipped), or "reset" (the stream has a new epoch). The last two are
 * delivered too, but the application must reload the channel's history.
 */
export class PositionTracker {
  constructor() {
    this._positions = new Map();
  }

  get(channel) {
    return this._positions.get(channel) ?? null;
  }

  set(channel, epoch, offset) {
    this._positions.set(channel, { epoch, offset });
  }

  delete(channel) {
    this._positions.delete(channel);
  }

  accept(channel, epoch, offset) {
    const known = this._positions.get(channel);
    if (known === undefined) {
      this.set(channel, epoch, offset);
      return "new";
    }
    if (known.epoch !== epoch) {
      this.set(channel, epoch, offset);
      return "reset";
    }
    if (offset <= known.offset) return "duplicate";
    const verdict = offset === known.offset + 1 ? "new" : "gap";
    known.offset = offset;
    return verdict;
  }
}
