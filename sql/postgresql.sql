-- trex database schema, PostgreSQL.  Kept in step with sqlite.sql by
-- tests/test_db.py (same tables, same columns).  Flags are the bitmasks of
-- trex/flags.py.  Keys come from explicit sequences.

CREATE SEQUENCE IF NOT EXISTS frameinfo_framekey_seq;
CREATE TABLE IF NOT EXISTS frameinfo (
    framekey BIGINT PRIMARY KEY DEFAULT nextval('frameinfo_framekey_seq'),
    rawpath TEXT NOT NULL UNIQUE,          -- relative to the project root
    night TEXT NOT NULL,
    imagetyp TEXT,                         -- bias, dark, flat, object (NULL: unreadable)
    projid TEXT,
    field TEXT,
    ccd TEXT,
    filter TEXT,
    exptime DOUBLE PRECISION,              -- s
    dateobs TEXT,                          -- UTC start, ISO 8601
    jd DOUBLE PRECISION,                   -- UTC mid-exposure
    ra DOUBLE PRECISION,                   -- deg, header pointing
    decl DOUBLE PRECISION,                 -- deg, header pointing
    gain DOUBLE PRECISION,                 -- e-/ADU
    rdnoise DOUBLE PRECISION,              -- e-
    saturate DOUBLE PRECISION,             -- ADU
    pixscale DOUBLE PRECISION,       -- arcsec/px, header guess (NULL: none)
    sitelat DOUBLE PRECISION,        -- deg
    sitelong DOUBLE PRECISION,       -- deg east
    sitealt DOUBLE PRECISION,        -- m
    biassec TEXT,                          -- IRAF section, 1-based
    trimsec TEXT,
    naxis1 INTEGER,
    naxis2 INTEGER,
    filesize BIGINT,                       -- bytes, with mtime: detects a changed file
    mtime DOUBLE PRECISION,
    isok BOOLEAN NOT NULL,
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
    mtime_ns BIGINT NOT NULL,
    updated TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS framestatus (
    framekey BIGINT NOT NULL REFERENCES frameinfo (framekey),
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

CREATE SEQUENCE IF NOT EXISTS filters_filterkey_seq;
CREATE TABLE IF NOT EXISTS filters (
    filterkey INTEGER PRIMARY KEY DEFAULT nextval('filters_filterkey_seq'),
    name TEXT NOT NULL UNIQUE,
    description TEXT
);

CREATE SEQUENCE IF NOT EXISTS masterframes_masterkey_seq;
CREATE TABLE IF NOT EXISTS masterframes (
    masterkey INTEGER PRIMARY KEY DEFAULT nextval('masterframes_masterkey_seq'),
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
    framekey BIGINT PRIMARY KEY REFERENCES frameinfo (framekey),
    projid TEXT,
    redpath TEXT,                          -- relative to the project root
    frameisok BOOLEAN NOT NULL,
    reason TEXT,
    masterbias TEXT,
    masterdark TEXT,
    masterflat TEXT,
    medsky DOUBLE PRECISION,               -- ADU
    skyrms DOUBLE PRECISION,               -- ADU
    nsources INTEGER,
    meds DOUBLE PRECISION,                 -- median PSF S, 1/px^2
    medd DOUBLE PRECISION,
    medk DOUBLE PRECISION,
    fwhm DOUBLE PRECISION,                 -- px
    ellipticity DOUBLE PRECISION,
    wcs_nmatch INTEGER,
    wcs_median DOUBLE PRECISION,           -- px
    wcs_p90 DOUBLE PRECISION,              -- px
    wcs_std DOUBLE PRECISION,              -- px
    configsha TEXT
);

CREATE SEQUENCE IF NOT EXISTS astromrefs_astromrefkey_seq;
CREATE TABLE IF NOT EXISTS astromrefs (
    astromrefkey INTEGER PRIMARY KEY DEFAULT nextval('astromrefs_astromrefkey_seq'),
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL,
    framekey BIGINT NOT NULL REFERENCES frameinfo (framekey),
    path TEXT NOT NULL,
    isactive BOOLEAN NOT NULL,
    created TEXT NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS photrefs_photrefkey_seq;
CREATE TABLE IF NOT EXISTS photrefs (
    photrefkey INTEGER PRIMARY KEY DEFAULT nextval('photrefs_photrefkey_seq'),
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL,
    path TEXT NOT NULL,
    framekeys TEXT NOT NULL,               -- comma-separated frames in the stack
    nframes INTEGER NOT NULL,
    fwhm DOUBLE PRECISION,
    medsky DOUBLE PRECISION,
    isactive BOOLEAN NOT NULL,
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
    ra DOUBLE PRECISION,                   -- deg, ICRS, catalog epoch
    decl DOUBLE PRECISION,
    mag DOUBLE PRECISION,
    color DOUBLE PRECISION,
    pmra DOUBLE PRECISION,                 -- mas/yr
    pmdec DOUBLE PRECISION,                -- mas/yr
    epoch DOUBLE PRECISION                 -- Julian year
);

CREATE TABLE IF NOT EXISTS ap_photometry (
    framekey BIGINT NOT NULL,
    photkey TEXT NOT NULL,
    objectid TEXT NOT NULL,
    aperture SMALLINT NOT NULL,            -- index into the configured apertures
    xcc REAL,                              -- px, 0-based
    ycc REAL,
    bgv REAL,                              -- ADU/px
    bge REAL,
    fsv REAL,
    fdv REAL,
    fkv REAL,
    flux DOUBLE PRECISION,                 -- ADU
    fluxerr DOUBLE PRECISION,
    mag REAL,                              -- instrumental (aim)
    magerr REAL,
    flag INTEGER NOT NULL,
    arm REAL                               -- after magnitude fitting
);
CREATE INDEX IF NOT EXISTS ap_photometry_framekey ON ap_photometry (framekey);

CREATE TABLE IF NOT EXISTS ism_photometry (
    framekey BIGINT NOT NULL,
    photrefkey INTEGER NOT NULL,
    objectid TEXT NOT NULL,
    aperture SMALLINT NOT NULL,
    xcc REAL,
    ycc REAL,
    dflux DOUBLE PRECISION,                -- ADU on the reference scale
    dfluxerr DOUBLE PRECISION,
    flux DOUBLE PRECISION,
    fluxerr DOUBLE PRECISION,
    mag REAL,
    magerr REAL,
    flag INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ism_photometry_framekey ON ism_photometry (framekey);

CREATE SEQUENCE IF NOT EXISTS iphotfiles_iphotfilekey_seq;
CREATE TABLE IF NOT EXISTS iphotfiles (
    iphotfilekey BIGINT PRIMARY KEY DEFAULT nextval('iphotfiles_iphotfilekey_seq'),
    framekey BIGINT NOT NULL UNIQUE REFERENCES frameinfo (framekey),
    photrefkey INTEGER NOT NULL,
    path TEXT NOT NULL,
    nobjects INTEGER NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS iphotobjects (
    framekey BIGINT NOT NULL,
    iphotfilekey BIGINT NOT NULL,
    objectid TEXT NOT NULL,
    rowindex INTEGER NOT NULL             -- row of the object in the iphot product
);
CREATE INDEX IF NOT EXISTS iphotobjects_framekey ON iphotobjects (framekey);

CREATE TABLE IF NOT EXISTS photindex_iphots (
    framekey BIGINT NOT NULL,
    iphotfilekey BIGINT NOT NULL,
    rjd DOUBLE PRECISION NOT NULL,
    projid TEXT NOT NULL,
    field TEXT NOT NULL,
    ccd TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS lcinfo (
    projid TEXT NOT NULL,
    objectid TEXT NOT NULL,
    path TEXT NOT NULL,
    nobs INTEGER NOT NULL,
    rjd_min DOUBLE PRECISION,
    rjd_max DOUBLE PRECISION,
    median_mag DOUBLE PRECISION,
    mad DOUBLE PRECISION,
    rms DOUBLE PRECISION,
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
    aperture SMALLINT NOT NULL,
    mag DOUBLE PRECISION,                            -- catalog magnitude
    x DOUBLE PRECISION,                              -- median position on the frames, px
    y DOUBLE PRECISION,
    aim_n INTEGER,
    aim_nights INTEGER,
    aim_mean DOUBLE PRECISION,
    aim_rms DOUBLE PRECISION,
    aim_median DOUBLE PRECISION,
    aim_mad DOUBLE PRECISION,
    aim_crms DOUBLE PRECISION,
    arm_n INTEGER,
    arm_nights INTEGER,
    arm_mean DOUBLE PRECISION,
    arm_rms DOUBLE PRECISION,
    arm_median DOUBLE PRECISION,
    arm_mad DOUBLE PRECISION,
    arm_crms DOUBLE PRECISION,
    aep_n INTEGER,
    aep_nights INTEGER,
    aep_mean DOUBLE PRECISION,
    aep_rms DOUBLE PRECISION,
    aep_median DOUBLE PRECISION,
    aep_mad DOUBLE PRECISION,
    aep_crms DOUBLE PRECISION,
    atf_n INTEGER,
    atf_nights INTEGER,
    atf_mean DOUBLE PRECISION,
    atf_rms DOUBLE PRECISION,
    atf_median DOUBLE PRECISION,
    atf_mad DOUBLE PRECISION,
    atf_crms DOUBLE PRECISION,
    irm_n INTEGER,
    irm_nights INTEGER,
    irm_mean DOUBLE PRECISION,
    irm_rms DOUBLE PRECISION,
    irm_median DOUBLE PRECISION,
    irm_mad DOUBLE PRECISION,
    irm_crms DOUBLE PRECISION,
    iep_n INTEGER,
    iep_nights INTEGER,
    iep_mean DOUBLE PRECISION,
    iep_rms DOUBLE PRECISION,
    iep_median DOUBLE PRECISION,
    iep_mad DOUBLE PRECISION,
    iep_crms DOUBLE PRECISION,
    itf_n INTEGER,
    itf_nights INTEGER,
    itf_mean DOUBLE PRECISION,
    itf_rms DOUBLE PRECISION,
    itf_median DOUBLE PRECISION,
    itf_mad DOUBLE PRECISION,
    itf_crms DOUBLE PRECISION,
    PRIMARY KEY (projid, objectid, aperture)
);
