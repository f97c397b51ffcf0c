-- trex database schema, SQLite.  Kept in step with postgresql.sql by
-- tests/test_db.py (same tables, same columns).  Flags are the bitmasks of
-- trex/flags.py.  INTEGER PRIMARY KEY columns are
-- SQLite row ids (the sequences of PostgreSQL).

CREATE TABLE IF NOT EXISTS frameinfo (
    framekey INTEGER PRIMARY KEY,
    rawpath TEXT NOT NULL UNIQUE,          -- relative to the project root
    night TEXT NOT NULL,
    imagetyp TEXT,                         -- bias, dark, flat, object (NULL: unreadable)
    projid TEXT,
    field TEXT,
    ccd TEXT,
    filter TEXT,
    exptime REAL,              -- s
    dateobs TEXT,                          -- UTC start, ISO 8601
    jd REAL,                   -- UTC mid-exposure
    ra REAL,                   -- deg, header pointing
    decl REAL,                 -- deg, header pointing
    gain REAL,                 -- e-/ADU
    rdnoise REAL,              -- e-
    saturate REAL,             -- ADU
    pixscale REAL,                   -- arcsec/px, header guess (NULL: none)
    sitelat REAL,                    -- deg
    sitelong REAL,                   -- deg east
    sitealt REAL,                    -- m
    biassec TEXT,                          -- IRAF section, 1-based
    trimsec TEXT,
    naxis1 INTEGER,
    naxis2 INTEGER,
    filesize INTEGER,                       -- bytes, with mtime: detects a changed file
    mtime REAL,
    isok INTEGER NOT NULL,
    reason TEXT,                           -- why the frame is not ok
    header TEXT,                           -- the header as FITS card text
    configsha TEXT                         -- hash of the settings the header was parsed with
);

CREATE INDEX IF NOT EXISTS frameinfo_jd ON frameinfo (jd);
CREATE INDEX IF NOT EXISTS frameinfo_night ON frameinfo (night);
CREATE INDEX IF NOT EXISTS frameinfo_configsha ON frameinfo (configsha);

-- RAW/<night> folders whose files were all read, and the folder's mtime then: a night
-- whose folder has not changed since is not listed again
CREATE TABLE IF NOT EXISTS rawnights (
    night TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    updated TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS framestatus (
    framekey INTEGER NOT NULL REFERENCES frameinfo (framekey),
    stage TEXT NOT NULL,                   -- calibrate, extract, astrometry, photometry, ...
    status TEXT NOT NULL,                  -- done or failed
    reason TEXT,
    configsha TEXT,                        -- hash of the settings of the stage (trex.stages)
    inputs TEXT,                           -- what else the result depends on (masters, references)
    updated TEXT NOT NULL,
    PRIMARY KEY (framekey, stage)
);

CREATE TABLE IF NOT EXISTS phasestatus (
    phase TEXT NOT NULL,                   -- a project phase: masters, photref, magfit, ...
    item TEXT NOT NULL,                    -- what it was done for, e.g. projid/field/ccd
    status TEXT NOT NULL,                  -- done or failed
    reason TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (phase, item)
);

CREATE TABLE IF NOT EXISTS filters (
    filterkey INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT
);

CREATE TABLE IF NOT EXISTS masterframes (
    masterkey INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                    -- bias, dark, flat, badpix
    night TEXT NOT NULL,
    ccd TEXT NOT NULL,
    filter TEXT NOT NULL,
    path TEXT NOT NULL,
    inputs TEXT NOT NULL,                  -- hash of the input frames and settings
    ninputs INTEGER NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (kind, night, ccd, filter)
);

CREATE TABLE IF NOT EXISTS calibratedframes (
    framekey INTEGER PRIMARY KEY REFERENCES frameinfo (framekey),
    projid TEXT,
    redpath TEXT,                          -- relative to the project root
    frameisok INTEGER NOT NULL,
    reason TEXT,
    masterbias TEXT,
    masterdark TEXT,
    masterflat TEXT,
    medsky REAL,               -- ADU
    skyrms REAL,               -- ADU
    nsources INTEGER,
    meds REAL,                 -- median PSF S, 1/px^2
    medd REAL,
    medk REAL,
    fwhm REAL,                 -- px
    ellipticity REAL,
    wcs_nmatch INTEGER,
    wcs_median REAL,           -- px
    wcs_p90 REAL,              -- px
    wcs_std REAL,              -- px
    configsha TEXT
);

CREATE TABLE IF NOT EXISTS astromrefs (
    astromrefkey INTEGER PRIMARY KEY,
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL,
    framekey INTEGER NOT NULL REFERENCES frameinfo (framekey),
    path TEXT NOT NULL,
    isactive INTEGER NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS photrefs (
    photrefkey INTEGER PRIMARY KEY,
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL,
    path TEXT NOT NULL,
    framekeys TEXT NOT NULL,               -- comma-separated frames in the stack
    nframes INTEGER NOT NULL,
    fwhm REAL,
    medsky REAL,
    isactive INTEGER NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS photometryinfo (
    photkey TEXT PRIMARY KEY,              -- hash of the photometry settings
    apertures TEXT NOT NULL,
    settings TEXT NOT NULL,                -- JSON
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS objectinfo (
    objectid TEXT PRIMARY KEY,
    field TEXT,
    ra REAL,                   -- deg, ICRS, catalog epoch
    decl REAL,
    mag REAL,
    color REAL,
    pmra REAL,                 -- mas/yr
    pmdec REAL,                -- mas/yr
    epoch REAL                 -- Julian year
);

CREATE TABLE IF NOT EXISTS ap_photometry (
    framekey INTEGER NOT NULL,
    photkey TEXT NOT NULL,
    objectid TEXT NOT NULL,
    aperture INTEGER NOT NULL,            -- index into the configured apertures
    xcc REAL,                              -- px, 0-based
    ycc REAL,
    bgv REAL,                              -- ADU/px
    bge REAL,
    fsv REAL,
    fdv REAL,
    fkv REAL,
    flux REAL,                 -- ADU
    fluxerr REAL,
    mag REAL,                              -- instrumental (aim)
    magerr REAL,
    flag INTEGER NOT NULL,
    arm REAL                               -- after magnitude fitting
);
CREATE INDEX IF NOT EXISTS ap_photometry_framekey ON ap_photometry (framekey);

CREATE TABLE IF NOT EXISTS ism_photometry (
    framekey INTEGER NOT NULL,
    photrefkey INTEGER NOT NULL,
    objectid TEXT NOT NULL,
    aperture INTEGER NOT NULL,
    xcc REAL,
    ycc REAL,
    dflux REAL,                -- ADU on the reference scale
    dfluxerr REAL,
    flux REAL,
    fluxerr REAL,
    mag REAL,
    magerr REAL,
    flag INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ism_photometry_framekey ON ism_photometry (framekey);

CREATE TABLE IF NOT EXISTS iphotfiles (
    iphotfilekey INTEGER PRIMARY KEY,
    framekey INTEGER NOT NULL UNIQUE REFERENCES frameinfo (framekey),
    photrefkey INTEGER NOT NULL,
    path TEXT NOT NULL,
    nobjects INTEGER NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS iphotobjects (
    framekey INTEGER NOT NULL,
    iphotfilekey INTEGER NOT NULL,
    objectid TEXT NOT NULL,
    rowindex INTEGER NOT NULL             -- row of the object in the iphot product
);
CREATE INDEX IF NOT EXISTS iphotobjects_framekey ON iphotobjects (framekey);

CREATE TABLE IF NOT EXISTS photindex_iphots (
    framekey INTEGER NOT NULL,
    iphotfilekey INTEGER NOT NULL,
    rjd REAL NOT NULL,
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS lcinfo (
    projid TEXT NOT NULL,
    objectid TEXT NOT NULL,
    path TEXT NOT NULL,
    nobs INTEGER NOT NULL,
    rjd_min REAL,
    rjd_max REAL,
    median_mag REAL,
    mad REAL,
    rms REAL,
    configsha TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (projid, objectid)
);

-- per star and aperture, statistics of every magnitude column p of its light curve
-- (trex.lcstats.star_rows): p_n points, p_nights nights with points, p_mean and
-- p_rms (ddof 1) over all points; p_median, p_mad: the nights' medians and MADs
-- averaged with their points as weights; p_crms: the nights' clipped RMS pooled.
-- mag; updated as nights are added to the light curve
CREATE TABLE IF NOT EXISTS lcstats (
    projid TEXT NOT NULL,
    objectid TEXT NOT NULL,
    aperture INTEGER NOT NULL,
    mag REAL,                            -- catalog magnitude
    x REAL,                              -- median position on the frames, px
    y REAL,
    aim_n INTEGER,
    aim_nights INTEGER,
    aim_mean REAL,
    aim_rms REAL,
    aim_median REAL,
    aim_mad REAL,
    aim_crms REAL,
    arm_n INTEGER,
    arm_nights INTEGER,
    arm_mean REAL,
    arm_rms REAL,
    arm_median REAL,
    arm_mad REAL,
    arm_crms REAL,
    aep_n INTEGER,
    aep_nights INTEGER,
    aep_mean REAL,
    aep_rms REAL,
    aep_median REAL,
    aep_mad REAL,
    aep_crms REAL,
    atf_n INTEGER,
    atf_nights INTEGER,
    atf_mean REAL,
    atf_rms REAL,
    atf_median REAL,
    atf_mad REAL,
    atf_crms REAL,
    irm_n INTEGER,
    irm_nights INTEGER,
    irm_mean REAL,
    irm_rms REAL,
    irm_median REAL,
    irm_mad REAL,
    irm_crms REAL,
    iep_n INTEGER,
    iep_nights INTEGER,
    iep_mean REAL,
    iep_rms REAL,
    iep_median REAL,
    iep_mad REAL,
    iep_crms REAL,
    itf_n INTEGER,
    itf_nights INTEGER,
    itf_mean REAL,
    itf_rms REAL,
    itf_median REAL,
    itf_mad REAL,
    itf_crms REAL,
    PRIMARY KEY (projid, objectid, aperture)
);
