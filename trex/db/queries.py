"""The read queries of trex, each named after what it returns.

Every SQL text that reads the project's state is here (the writes are in
:mod:`trex.ledger`), parameterized, and written once for both engines.
:class:`Queries` is bound to one open :class:`trex.db.Database`; the ledger
exposes it as ``ledger.read``.
"""

from __future__ import annotations

import numpy as np

from trex.db import Database

#: per-frame quality columns by which reference frames are ranked
_QUALITY = ("c.framekey, c.meds, c.medd, c.medsky, c.nsources, c.frameisok, c.redpath, c.fwhm")
#: a frame whose ``stage`` is done (join of calibratedframes c, frameinfo f)
_DONE = ("FROM calibratedframes c JOIN frameinfo f ON f.framekey = c.framekey "
         "JOIN framestatus s ON s.framekey = c.framekey AND s.stage = ? AND s.status = 'done' ")


class Queries:
    """Named read queries over one database connection."""

    def __init__(self, db: Database):
        self.db = db

    # -- raw files ----------------------------------------------------------
    def raw_files(self, night: str) -> dict[str, tuple[int, int, float]]:
        """rawpath -> (framekey, filesize, mtime) of the recorded raw files of a night."""
        return {r[1]: (int(r[0]), r[2], r[3]) for r in self.db.query(
            "SELECT framekey, rawpath, filesize, mtime FROM frameinfo WHERE night = ?", (night,))}

    def raw_nights(self) -> dict[str, int]:
        """night -> mtime (ns) its RAW folder had when its files were last read."""
        return {n: int(m) for n, m in self.db.query("SELECT night, mtime_ns FROM rawnights")}

    def raw_file_rows(self, imagetyp: str | None = None) -> list[dict]:
        """``frameinfo`` rows of the usable frames (of one type), by night, time and name."""
        sql = "SELECT * FROM frameinfo WHERE isok"
        params: tuple = ()
        if imagetyp:
            sql, params = sql + " AND imagetyp = ?", (imagetyp,)
        return self.db.query_dicts(sql + " ORDER BY night, jd, rawpath", params)

    def headers_parsed_otherwise(self, configsha: str) -> list[tuple[int, str, str, str]]:
        """(framekey, rawpath, night, header text) of the raw files read so far whose header
        was parsed with other settings than ``configsha`` (by the ``configsha`` index: a
        few rows of a large archive cost what they are, 10^5 frames scanned cost 0.2 s)."""
        return [(int(k), p, n, h) for k, p, n, h in self.db.query(
            "SELECT framekey, rawpath, night, header FROM frameinfo WHERE header IS NOT NULL "
            "AND (configsha IS NULL OR configsha < ? OR configsha > ?)", (configsha, configsha))]

    def object_fields(self) -> list[str]:
        """Fields of the usable object frames."""
        return [r[0] for r in self.db.query(
            "SELECT DISTINCT field FROM frameinfo WHERE imagetyp = 'object' AND isok ORDER BY field")]

    def exposures(self, exclude: set[int] = frozenset()) -> list[tuple]:
        """(rawpath, dateobs, ccd, imagetyp, exptime) of the usable frames, in the order they
        were recorded, but those of ``exclude`` (frame keys)."""
        return [r[1:] for r in self.db.query(
            "SELECT framekey, rawpath, dateobs, ccd, imagetyp, exptime FROM frameinfo WHERE isok "
            "ORDER BY framekey") if int(r[0]) not in exclude]

    # -- per-frame state ---------------------------------------------------------
    def object_frames(self, framekeys: list[int] | None = None) -> list[dict]:
        """Usable object frames (all, or those of ``framekeys``) with their calibrated
        path, in time order."""
        sql = ("SELECT f.*, c.redpath FROM frameinfo f LEFT JOIN calibratedframes c "
               "ON c.framekey = f.framekey WHERE f.imagetyp = 'object' AND f.isok")
        if framekeys is None:
            return self.db.query_dicts(sql + " ORDER BY f.jd, f.framekey")
        out = []
        for part in _chunks(sorted(set(framekeys))):
            out += self.db.query_dicts(sql + f" AND f.framekey IN ({_marks(part)})", part)
        return sorted(out, key=lambda r: (r["jd"] if r["jd"] is not None else 0.0, r["framekey"]))

    def frames_to_run(self, chain: dict[str, str], before: tuple[str, ...]) -> list[int]:
        """Frame keys of the usable object frames whose ``before`` stages are all done and
        where a stage of ``chain`` (stage -> current settings hash) is not done under its
        current settings (no state, failed, or done with other settings)."""
        params: list = []
        sql = "SELECT f.framekey FROM frameinfo f WHERE f.imagetyp = 'object' AND f.isok"
        if before:
            sql += (f" AND (SELECT count(*) FROM framestatus s WHERE s.framekey = f.framekey "
                    f"AND s.status = 'done' AND s.stage IN ({_marks(before)})) = ?")
            params += [*before, len(before)]
        fresh = " OR ".join(["(s.stage = ? AND (s.configsha = ? OR s.configsha IS NULL))"] * len(chain))
        sql += (f" AND (SELECT count(*) FROM framestatus s WHERE s.framekey = f.framekey "
                f"AND s.status = 'done' AND ({fresh})) < ?")
        params += [v for item in chain.items() for v in item] + [len(chain)]
        return [int(r[0]) for r in self.db.query(sql, params)]

    def input_groups(self, stages: tuple[str, ...]) -> list[tuple]:
        """(stage, inputs, night, ccd, filter, field, projid) of the done stages, each once:
        what a stage's inputs depend on, to find the frames whose inputs changed."""
        return self.db.query(
            "SELECT DISTINCT s.stage, s.inputs, f.night, f.ccd, f.filter, f.field, f.projid "
            "FROM framestatus s JOIN frameinfo f ON f.framekey = s.framekey "
            f"WHERE s.status = 'done' AND s.inputs IS NOT NULL AND s.stage IN ({_marks(stages)})",
            stages)

    def frames_of_input_group(self, group: tuple) -> list[int]:
        """Frame keys of one group of :meth:`input_groups`."""
        stage, inputs, night, *names = group
        match = " AND ".join(f"COALESCE(f.{c}, '') = ?" for c in ("ccd", "filter", "field", "projid"))
        return [int(r[0]) for r in self.db.query(
            "SELECT f.framekey FROM framestatus s JOIN frameinfo f ON f.framekey = s.framekey "
            f"WHERE s.stage = ? AND s.inputs = ? AND s.status = 'done' AND f.night = ? AND {match}",
            (stage, inputs, night, *[n or "" for n in names]))]

    def frame_states(self, stages: tuple[str, ...],
                     framekeys: list[int]) -> dict[int, dict[str, tuple]]:
        """framekey -> {stage: (status, configsha, inputs)} of some frames and stages."""
        out: dict[int, dict[str, tuple]] = {}
        for part in _chunks(sorted(set(framekeys))):
            for framekey, stage, status, sha, inputs in self.db.query(
                    f"SELECT framekey, stage, status, configsha, inputs FROM framestatus "
                    f"WHERE stage IN ({_marks(stages)}) AND framekey IN ({_marks(part)})",
                    (*stages, *part)):
                out.setdefault(int(framekey), {})[stage] = (status, sha, inputs)
        return out

    def groups_done(self, stage: str, ccd: bool = False) -> list[tuple]:
        """(projid, field[, ccd]) of the good calibrated frames whose ``stage`` is done."""
        cols = "c.projid, f.field" + (", f.ccd" if ccd else "")
        return [tuple(r) for r in self.db.query(
            f"SELECT DISTINCT {cols} {_DONE} WHERE c.frameisok ORDER BY {cols}", (stage,))]

    def quality_of_done_frames(self, stage: str, projid: str, field: str,
                               ccd: str | None = None) -> dict[str, np.ndarray]:
        """Quality columns (framekey, meds, medd, medsky, nsources, frameisok, redpath,
        fwhm) of a group's frames whose ``stage`` is done (what references are ranked by)."""
        sql = f"SELECT {_QUALITY} {_DONE} WHERE c.projid = ? AND f.field = ?"
        params = [stage, projid, field]
        if ccd is not None:
            sql, params = sql + " AND f.ccd = ?", params + [ccd]
        return self.db.query_columns(sql + " ORDER BY c.framekey", params)

    def frames_done(self, stage: str, projid: str, field: str) -> list[tuple[int, str, str]]:
        """(framekey, redpath, night) of a group's frames whose ``stage`` is done, in time order."""
        return [(int(k), r, n) for k, r, n in self.db.query(
            f"SELECT c.framekey, c.redpath, f.night {_DONE} WHERE c.projid = ? AND f.field = ? "
            "ORDER BY f.jd, c.framekey", (stage, projid, field))]

    def frames_to_merge(self) -> list[tuple]:
        """(framekey, redpath, night, projid, field, jd) of frames with photometry done and
        not yet merged into the light curves, in time order."""
        return self.db.query(
            "SELECT c.framekey, c.redpath, f.night, c.projid, f.field, f.jd FROM calibratedframes c "
            "JOIN frameinfo f ON f.framekey = c.framekey "
            "JOIN framestatus p ON p.framekey = c.framekey AND p.stage = 'photometry' "
            "AND p.status = 'done' LEFT JOIN framestatus l ON l.framekey = c.framekey "
            "AND l.stage = 'lightcurves' WHERE l.status IS NULL ORDER BY f.jd, c.framekey")

    def merged_frames_between(self, projid: str, field: str, rjd_lo: float,
                              rjd_hi: float) -> list[tuple[int, float]]:
        """(framekey, rjd) of a group's frames in the light curves with rjd in [lo, hi]."""
        return [(int(k), float(jd) - 2400000.0) for k, jd in self.db.query(
            "SELECT c.framekey, f.jd FROM frameinfo f JOIN calibratedframes c "
            "ON c.framekey = f.framekey JOIN framestatus s ON s.framekey = f.framekey "
            "AND s.stage = 'lightcurves' AND s.status = 'done' WHERE c.projid = ? "
            "AND f.field = ? AND f.jd BETWEEN ? AND ? ORDER BY f.jd",
            (projid, field, rjd_lo + 2400000.0, rjd_hi + 2400000.0))]

    # -- references and phases -------------------------------------------------------
    def masters(self) -> dict[tuple, tuple[str, str]]:
        """(kind, night, ccd, filter) -> (path, inputs hash) of the recorded masters."""
        return {tuple(r[:4]): (r[4], r[5]) for r in self.db.query(
            "SELECT kind, night, ccd, filter, path, inputs FROM masterframes")}

    def astrometric_reference(self, projid: str, field: str, ccd: str) -> tuple[int, str] | None:
        """(framekey, path) of a group's active astrometric reference."""
        rows = self.db.query("SELECT framekey, path FROM astromrefs WHERE projid = ? AND field = ? "
                             "AND ccd = ? AND isactive ORDER BY astromrefkey DESC",
                             (projid, field, ccd))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def astrometric_reference_frames(self, projid: str) -> list[tuple[str, str, float]]:
        """(field, redpath, jd) of the active astrometric reference frames of ``projid``."""
        return self.db.query(
            "SELECT a.field, c.redpath, f.jd FROM astromrefs a JOIN calibratedframes c "
            "ON c.framekey = a.framekey JOIN frameinfo f ON f.framekey = a.framekey "
            "WHERE a.projid = ? AND a.isactive", (projid,))

    def photometric_reference(self, projid: str, field: str, ccd: str) -> tuple[int, str, str] | None:
        """(photrefkey, path, framekeys text) of a group's active photometric reference."""
        rows = self.db.query("SELECT photrefkey, path, framekeys FROM photrefs WHERE projid = ? "
                             "AND field = ? AND ccd = ? AND isactive ORDER BY photrefkey DESC",
                             (projid, field, ccd))
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def phase_failures(self) -> list[tuple[str, str, str]]:
        """(phase, item, reason) of the project phases that failed."""
        return self.db.query("SELECT phase, item, reason FROM phasestatus WHERE status = 'failed' "
                             "ORDER BY phase, item")

    def lightcurve_projids(self) -> list[str]:
        return [r[0] for r in self.db.query("SELECT DISTINCT projid FROM lcinfo ORDER BY projid")]

    def lightcurve_state(self, projid: str, objectids: list[str]) -> tuple[dict, dict]:
        """(``lcstats`` columns, ``lcinfo`` columns) of some stars of ``projid`` (any order)."""
        stats, info = [], []
        for i in range(0, len(objectids), 500):
            part = objectids[i:i + 500]
            marks = ", ".join("?" * len(part))
            stats.append(self.db.query_columns(
                f"SELECT * FROM lcstats WHERE projid = ? AND objectid IN ({marks})", (projid, *part)))
            info.append(self.db.query_columns(
                f"SELECT objectid, rjd_min, rjd_max FROM lcinfo WHERE projid = ? "
                f"AND objectid IN ({marks})", (projid, *part)))
        join = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
        return (join(stats), join(info)) if stats else ({}, {})

    def lcstats(self, projid: str) -> dict[str, np.ndarray]:
        """The ``lcstats`` rows of ``projid`` as numpy columns, by object and aperture."""
        return self.db.query_columns("SELECT * FROM lcstats WHERE projid = ? "
                                     "ORDER BY objectid, aperture", (projid,))

    # -- summaries (trex status, trex report) ---------------------------------------------
    def frame_counts(self) -> list[tuple[str, str | None, bool, int]]:
        """(night, imagetyp, isok, frames) of the inventory."""
        return self.db.query("SELECT night, imagetyp, isok, count(*) FROM frameinfo "
                             "GROUP BY night, imagetyp, isok ORDER BY night")

    def stage_counts(self) -> list[tuple[str, str, str, int]]:
        """(night, stage, status, frames) of the per-frame stages."""
        return self.db.query("SELECT f.night, s.stage, s.status, count(*) FROM framestatus s "
                             "JOIN frameinfo f ON f.framekey = s.framekey "
                             "GROUP BY f.night, s.stage, s.status")

    def failure_counts(self) -> list[tuple[str | None, str, int]]:
        """(stage or None for the inventory, reason, frames), most frequent first."""
        return self.db.query(
            "SELECT s.stage, s.reason, count(*) FROM framestatus s WHERE s.status = 'failed' "
            "GROUP BY s.stage, s.reason "
            "UNION ALL SELECT NULL, reason, count(*) FROM frameinfo WHERE NOT isok "
            "GROUP BY reason ORDER BY 3 DESC")

    def waiting_frames(self, needs: dict[str, str], chain: dict[str, str]) -> dict[str, int]:
        """night -> usable object frames that a stage is still to run on.

        ``chain`` maps the stage, the stages it needs and those it uses to their
        current settings hashes; ``needs`` the stages it needs.  A frame waits when
        one stage of ``chain`` has no state under its current settings (none yet, or
        one of older settings: it will run, and what follows it) and no stage of
        ``needs`` failed under its current settings (that holds the frame back)."""
        def fresh(stages: dict[str, str]) -> tuple[str, tuple]:
            text = " OR ".join(["(s.stage = ? AND (s.configsha = ? OR s.configsha IS NULL))"]
                               * len(stages))
            return f"({text})", tuple(v for item in stages.items() for v in item)

        sql = "SELECT f.night, count(*) FROM frameinfo f WHERE f.isok AND f.imagetyp = 'object' "
        params: tuple = ()
        if needs:
            text, params = fresh(needs)
            sql += ("AND NOT EXISTS (SELECT 1 FROM framestatus s WHERE s.framekey = f.framekey "
                    f"AND s.status = 'failed' AND {text}) ")
        text, more = fresh(chain)
        sql += (f"AND (SELECT count(*) FROM framestatus s WHERE s.framekey = f.framekey AND {text}) "
                "< ? GROUP BY f.night")
        return {n: int(c) for n, c in self.db.query(sql, params + more + (len(chain),))}

    def lightcurve_counts(self) -> dict[str, int]:
        return {p: int(n) for p, n in self.db.query(
            "SELECT projid, count(*) FROM lcinfo GROUP BY projid")}

    def frame_quality_series(self) -> dict[str, np.ndarray]:
        """Per-frame quality joined with the header values, in time order (trex report)."""
        return self.db.query_columns(
            "SELECT c.framekey, c.projid, c.redpath, c.frameisok, c.medsky, c.meds, c.fwhm, "
            "c.ellipticity, c.nsources, c.wcs_median, c.wcs_p90, f.jd, f.exptime, f.gain, "
            "f.rdnoise FROM calibratedframes c JOIN frameinfo f ON f.framekey = c.framekey "
            "ORDER BY f.jd")

    def reference_framekeys(self, projid: str) -> list[int]:
        """Frames that were astrometric references of ``projid``, the active one first."""
        return [int(r[0]) for r in self.db.query(
            "SELECT framekey FROM astromrefs WHERE projid = ? ORDER BY isactive DESC", (projid,))]

    def last_subtracted_frame(self, projid: str) -> str | None:
        """Calibrated path of the latest subtracted frame of ``projid``."""
        rows = self.db.query("SELECT c.redpath FROM photindex_iphots p JOIN calibratedframes c "
                             "ON c.framekey = p.framekey WHERE p.projid = ? ORDER BY p.rjd DESC",
                             (projid,))
        return rows[0][0] if rows else None

    def merged_measurements(self) -> tuple[int, int]:
        """(frames with photometry done, aperture-0 measurements of frames in the light curves)."""
        frames = self.db.query("SELECT count(*) FROM framestatus WHERE stage = 'photometry' "
                               "AND status = 'done'")[0][0]
        rows = self.db.query("SELECT count(*) FROM ap_photometry a JOIN framestatus s ON "
                             "s.framekey = a.framekey AND s.stage = 'lightcurves' AND "
                             "s.status = 'done' WHERE a.aperture = 0")[0][0]
        return int(frames), int(rows)


def _marks(values) -> str:
    return ", ".join("?" * len(values))


def _chunks(values: list, size: int = 500) -> list[list]:
    """``values`` in lists of at most ``size`` (the parameters of one IN clause)."""
    return [values[i:i + size] for i in range(0, len(values), size)]
